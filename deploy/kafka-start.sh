#!/bin/sh
# Kafka in a container (docker-compose.yml, the tests' Docker path), secured like the native
# stack (broker/stack/kafka.py): SASL/SCRAM-SHA-512 for clients and between brokers, SASL/PLAIN
# from the static controller user on the controller listener, the StandardAuthorizer with
# allow.everyone.if.no.acl.found=false; admin, broker and controller are the super users.
# Every SCRAM user exists from the format on. Passwords come from the environment
# (PB_KAFKA_<USER>_PASSWORD, written by `permbroker stack compose-env`), never from this file.
# PB_KAFKA_HOST_ADVERTISED: where clients outside the container reach the HOST listener;
# KAFKA_HOME: the Kafka distribution (/opt/kafka in the apache/kafka image).
set -eu
: "${CLUSTER_ID:?}" "${PB_KAFKA_BROKER_PASSWORD:?}" "${PB_KAFKA_CONTROLLER_PASSWORD:?}"
conf=${PB_KAFKA_CONFIG:-/tmp/permbroker-server.properties}
umask 077
cat > "$conf" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
listeners=HOST://:9092,CONTROLLER://:9093,INTERNAL://:19092
advertised.listeners=HOST://${PB_KAFKA_HOST_ADVERTISED:-localhost:9092},INTERNAL://${PB_KAFKA_INTERNAL_ADVERTISED:-kafka:19092}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=HOST:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,INTERNAL:SASL_PLAINTEXT
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.host.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.internal.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.host.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.internal.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="${PB_KAFKA_BROKER_PASSWORD}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="${PB_KAFKA_CONTROLLER_PASSWORD}" user_controller="${PB_KAFKA_CONTROLLER_PASSWORD}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:broker;User:controller
auto.create.topics.enable=false
log.dirs=${PB_KAFKA_LOG_DIR:-/tmp/kraft-combined-logs}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPERTIES
set --
for user in admin worker agent service operator auditor api broker; do
  var="PB_KAFKA_$(echo "$user" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  eval "password=\${$var:?}"
  set -- "$@" --add-scram "SCRAM-SHA-512=[name=$user,password=$password]"
done
# The admin's client config, for the container's health check (kafka-broker-api-versions.sh).
cat > "${PB_KAFKA_ADMIN_CONFIG:-/tmp/permbroker-admin.properties}" <<CLIENT
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${PB_KAFKA_ADMIN_PASSWORD}";
CLIENT
home=${KAFKA_HOME:-/opt/kafka}
"$home/bin/kafka-storage.sh" format --ignore-formatted -t "$CLUSTER_ID" -c "$conf" "$@"
exec "$home/bin/kafka-server-start.sh" "$conf"
