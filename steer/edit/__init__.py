"""Edit: remove directions from the weights, or preview their removal. project (the audited projection
project_out, orthogonalize, ablation hooks), kernels with csrc/ (fast in-place projection kernels: tiled
torch, native C++ on CPU, Triton on CUDA), rank1 (rank-1 readout updates along an edit direction, as hooks
or baked into the weights), preview (the Edit object and the one preview context for every kind of edit)."""
