"""The devices domain: locks, their members and invitations, pairing and lock credentials, signed commands, lock
events and topics, the voice lockout a lock keeps. It imports no voice code, numpy or onnxruntime (checked)."""
