"""quill_torch: train quill's LSTM language model with PyTorch (DDP on GPUs and clusters).

Reads token files made by `quill prepare`; writes quill checkpoints. Entry points:
`python -m quill_torch.train` (training, under torchrun for several processes) and
`python -m quill_torch.eval` (loss of a checkpoint on a token file, as `quill eval --tokens`).
"""

__version__ = "0.1.0"
