"""The helpers of the GPU session script (tests/gpu_session.sh): the offline install,
the smoke stage and the stage summary. Each runs as ``python -m tests.session.<name>``."""
