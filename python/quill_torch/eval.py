"""Loss of a quill checkpoint on a split of a quill token file, computed by PyTorch exactly as
`quill eval --tokens FILE --split SPLIT` computes it (B streams, windows of T, zero state).

    python -m quill_torch.eval -c checkpoints/books-best.safetensors --tokens books.tokens
"""

import argparse
import json
import sys

import torch

from .checkpoint import CheckpointError, load
from .model import QuillLM, evaluate
from .tokens import TokenFileError, open_token_file


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m quill_torch.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--checkpoint", required=True)
    p.add_argument("--tokens", required=True, help="token file made by `quill prepare`")
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--batch", type=int, default=16, help="streams evaluated in parallel [16]")
    p.add_argument("--seq", type=int, default=128, help="window length [128]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if a.batch < 1 or a.seq < 1:
            raise ValueError("invalid batch/seq: must be at least 1")
        tensors, meta = load(a.checkpoint)
        tf = open_token_file(a.tokens)
        if meta["tokenizer"] != tf.tokenizer_json:
            raise ValueError(f"{a.tokens}: made with another tokenizer than {a.checkpoint}'s")
        mc = meta["model"]
        model = QuillLM(mc["vocab"], mc["embed"], mc["hidden"], mc["layers"], mc["dropout"],
                        mc.get("tie_weights", False))
        model.load_named(tensors)
        model.to(a.device)
        tokens = {"val": tf.val, "train": tf.train, "all": tf.tokens}[a.split]()
        if len(tokens) < 2:
            raise ValueError(f"{a.tokens}: the {a.split} split is too short to evaluate (fewer than 2 tokens)")
        nats, n = evaluate(model, tokens, a.batch, a.seq, torch.device(a.device))
    except (OSError, ValueError, KeyError, CheckpointError, TokenFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    loss = nats / n
    if a.json:
        print(json.dumps({"checkpoint": a.checkpoint, "tokens": n, "loss_per_token": loss}))
    else:
        print(f"loss {loss:.6f} nats/token over {n} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
