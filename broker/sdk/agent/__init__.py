"""The agent SDK: publish signed escalation requests and risk signals, await decisions."""
