"""SDKs: the agent client and the resource-side grant view. Imports adapters and schemas."""
