"""New weights from the learner to the rollout engines: the bucketed transfer protocol
(`protocol.py`) and the two channels that carry it, object store and broadcast (`channels.py`)."""
