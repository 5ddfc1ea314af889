"""The property model of the fault suite: the policy as the model reads it (spec), the worker's
identity gate over the model's keys (gate), the worlds it drives (world: a private Redis;
kafka_world: with a real Kafka in the loop), the state machine (machine) and its bursts
(concurrent)."""
