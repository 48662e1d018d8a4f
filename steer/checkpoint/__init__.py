"""Checkpoint: write, edit and check checkpoints on disk. save (atomic output folders, Hugging Face
checkpoints, SIGTERM handling), manifest (steer_manifest.json and the versions record), stream (the
streaming editor: a checkpoint orthogonalized tensor by tensor), rawio (safetensors headers, positioned
reads and writes, copies), gguf_io (GGUF files as edit input, and export to GGUF), rebuild (a recorded
edit applied to a checkpoint, as `steer edit` and `steer verify` run it), verify (a checkpoint rebuilt
from its manifest and compared tensor by tensor)."""
