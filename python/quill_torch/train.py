"""Train quill's LSTM language model with PyTorch, on one device or many (DDP).

    python -m quill_torch.train --tokens checkpoints/books.tokens --max-steps 5000
    torchrun --nproc-per-node 8 -m quill_torch.train --tokens books.tokens --batch 256 ...

Reads a token file made by `quill prepare` (its tokenizer and split included) and writes
quill checkpoints (`OUT/NAME-latest.safetensors`, `OUT/NAME-best.safetensors`) and quill's
metrics log (`OUT/NAME-metrics.jsonl`), which `quill sample`, `tui`, `eval`, `serve`, `info`,
`plot` open as they are and `quill train --tokens FILE --resume CKPT` continues on a CPU.
`--resume CKPT` continues a run of this trainer or of `quill train`.

The training is `quill train`'s (src/train/trainer.rs), step for step: the training split cut
into B streams (split across the R processes, B/R each), windows of T steps, (h, c) carried
from window to window and reset at each epoch's end, gradients cut at the window's edge; the
mean cross-entropy of the window; global-norm clipping; Adam (AdamW with weight decay) with
quill's hyper-parameters; linear warm-up then cosine decay to min-lr-ratio x lr over the
planned run; validation as quill's; a non-finite loss skips the update, resets the state and
halves the learning rate, five in a row stop. Dropout masks come from torch's generator,
seeded per step and rank, so a resumed run draws the same masks it would have drawn.
"""

import argparse
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import __version__
from .checkpoint import CheckpointError, load as load_checkpoint, save as save_checkpoint
from .model import QuillLM, evaluate, quill_param_names
from .tokens import TokenFileError, open_token_file

# quill train's defaults (src/cli/train.rs); None: not given.
DEFAULTS = dict(layers=2, hidden=256, embed=None, dropout=0.2, tie_weights=False, batch=32,
                seq=64, lr=2e-3, warmup=100, schedule="cosine", min_lr_ratio=0.1,
                weight_decay=0.0, clip=5.0, seed=1, eval_every=200, save_every=200,
                max_steps=None, epochs=None, max_minutes=None, out="checkpoints", name=None,
                forget_bias=1.0)
# TrainConfig field <- flag, for the flags a resumed run may override (quill's resumed_config).
CONFIG_FLAGS = dict(batch="batch", seq="seq", lr="lr", warmup_steps="warmup",
                    schedule="schedule", min_lr_ratio="min_lr_ratio",
                    weight_decay="weight_decay", clip="clip", seed="seed",
                    eval_every="eval_every", save_every="save_every", out="out", name="name")
MAX_WINDOW_TOKENS = 1 << 22


class Fatal(Exception):
    """An error reported as one `error: ...` line and exit status 1."""


def f32(x):
    return float(np.float32(x))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m quill_torch.train",
        description="Train quill's LSTM LM with PyTorch (DDP under torchrun) on a quill token file.")
    a = p.add_argument
    a("--tokens", required=True, help="token file made by `quill prepare` (tokenizer and split included)")
    a("--layers", type=int, help="LSTM layers L [2]")
    a("--hidden", type=int, help="hidden size H [256]")
    a("--embed", type=int, help="embedding size E [64 for char, = hidden otherwise]")
    a("--dropout", type=float, help="dropout on each layer's output while training [0.2]")
    a("--tie-weights", action="store_true", default=None, help="share embedding and output weights (E = H)")
    a("--batch", type=int, help="parallel streams B, all processes together [32]")
    a("--seq", type=int, help="window length T [64]")
    a("--lr", type=float, help="peak learning rate [2e-3]")
    a("--warmup", type=int, help="linear warm-up steps [100]")
    a("--schedule", choices=["cosine", "constant"], help="decay after warm-up [cosine]")
    a("--min-lr-ratio", type=float, help="final rate as a fraction of --lr [0.1]")
    a("--weight-decay", type=float, help="AdamW decoupled weight decay (0 = Adam) [0]")
    a("--clip", type=float, help="global gradient-norm clip (0 = off) [5]")
    a("--seed", type=int, help="initialisation and dropout [1]")
    a("--forget-bias", type=float, help="initial forget-gate bias of a new model [1]")
    a("--eval-every", type=int, help="validate every N steps (0 = only at the end) [200]")
    a("--save-every", type=int, help="write NAME-latest every N steps (0 = only at the end) [200]")
    a("--max-steps", type=int, help="stop after N steps in total")
    a("--epochs", type=float, help="stop after N epochs (fractions allowed)")
    a("--max-minutes", type=float, help="stop after N minutes of training in total")
    a("--steps-this-run", type=int, help="stop this run after N steps without changing the plan")
    a("--out", help="directory for checkpoints and the metrics log [checkpoints]")
    a("--name", help="checkpoint name prefix [the token file's stem]")
    a("--resume", help="continue from a full checkpoint (this trainer's or quill train's)")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto",
      help="auto: CUDA when available (one GPU per process, LOCAL_RANK), else CPU")
    a("--amp", choices=["off", "bf16"], default="off",
      help="mixed precision: bf16 autocast of the forward pass (weights, optimizer and loss stay f32)")
    a("--tf32", action="store_true", help="allow TF32 matmuls and cuDNN on GPUs (faster, less exact)")
    a("--log-every", type=int, default=50, help="print a progress line every N steps [50]")
    a("--no-verify", action="store_true", help="skip the full read of the token file's checksum")
    return p.parse_args(argv)


# --- distributed -------------------------------------------------------------------------------

class Dist:
    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
        if device_arg == "cuda" and not torch.cuda.is_available():
            raise Fatal("--device cuda: no CUDA device is available")
        if cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.on = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if self.on:
            dist.init_process_group("nccl" if cuda else "gloo")
        self.backend = dist.get_backend() if self.on else "none"

    @property
    def main(self):
        return self.rank == 0

    def sum(self, values):
        """Element-wise sum over processes of a list of floats (f64)."""
        if not self.on:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_streams(self, t):
        """(L, B/R, H) on every rank -> (L, B, H), streams in rank order."""
        if not self.on:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=1)

    def barrier(self):
        if self.on:
            dist.barrier()

    def close(self):
        if self.on:
            dist.destroy_process_group()


# --- quill's schedule, RNG record ----------------------------------------------------------------

def schedule_lr(cfg, step, progress):
    """src/train/optim.rs `LrSchedule::lr`: warm-up base·(step+1)/warmup, then cosine to
    min_lr_ratio·base as `progress` goes from 0 to 1; in f64, rounded to f32."""
    base = f32(cfg["lr"])
    warm = (step + 1) / cfg["warmup_steps"] if step < cfg["warmup_steps"] else 1.0
    if cfg["schedule"] == "constant":
        decay = 1.0
    else:
        r = f32(cfg["min_lr_ratio"])
        p = min(max(progress, 0.0), 1.0)
        decay = r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))
    return f32(base * warm * decay)


M64 = (1 << 64) - 1


def pcg32_seed_from_u64(seed):
    """The state rand_pcg's Pcg32::seed_from_u64(seed) starts from (rand_core 0.9), so a fresh
    run records the dropout RNG quill would have; quill draws from it on `--resume`."""
    state, words = seed & M64, []
    for _ in range(4):
        state = (state * 6364136223846793005 + 11634580027462260723) & M64
        xs = (((state >> 18) ^ state) >> 27) & 0xFFFFFFFF
        rot = state >> 59
        words.append(((xs >> rot) | (xs << (32 - rot))) & 0xFFFFFFFF)
    s = words[0] | (words[1] << 32)
    inc = (words[2] | (words[3] << 32)) | 1
    s = (s + inc) & M64
    s = (s * 6364136223846793005 + inc) & M64
    return {"state": s, "increment": inc}


def dropout_seed(seed, step, rank):
    return ((seed * 0x9E3779B97F4A7C15) ^ (step * 0xBF58476D1CE4E5B9) ^ (rank * 0x94D049BB133111EB)) & M64


# --- the run -----------------------------------------------------------------------------------

class Run:
    def __init__(self, args, d):
        self.args, self.d = args, d
        try:
            self.tf = open_token_file(args.tokens, verify=False)
            if not args.no_verify and d.local_rank == 0:
                self.tf.verify()
        except (OSError, TokenFileError) as e:
            raise Fatal(str(e)) from None
        d.barrier()
        self.train_tokens, self.val_tokens = self.tf.train(), self.tf.val()
        tok_kind = json.loads(self.tf.tokenizer_json).get("kind", "char")
        given = lambda k: getattr(args, k) is not None

        if args.resume:
            self.load_resume(args.resume, given)
        else:
            cfg = {}
            for field, flag in CONFIG_FLAGS.items():
                v = getattr(args, flag)
                cfg[field] = DEFAULTS[flag] if v is None else v
            fb = DEFAULTS["forget_bias"] if args.forget_bias is None else args.forget_bias
            if not (math.isfinite(fb) and -10.0 <= fb <= 10.0):
                raise Fatal(f"invalid forget-bias: {fb} is outside [-10, 10]")
            cfg["forget_bias"] = fb
            cfg["name"] = cfg["name"] or os.path.splitext(os.path.basename(args.tokens))[0]
            cfg.update(max_steps=args.max_steps, epochs=args.epochs, max_minutes=args.max_minutes,
                       val_fraction=self.tf.meta["val_fraction"])
            self.cfg = cfg
            hidden = args.hidden or DEFAULTS["hidden"]
            mc = dict(vocab=self.tf.vocab, layers=args.layers or DEFAULTS["layers"], hidden=hidden,
                      embed=args.embed or (64 if tok_kind == "char" else hidden),
                      dropout=DEFAULTS["dropout"] if args.dropout is None else args.dropout,
                      tie_weights=bool(args.tie_weights))
            self.check_config(mc)
            torch.manual_seed(cfg["seed"])
            self.model = QuillLM(**mc)
            self.model.init_weights(cfg["forget_bias"])
            self.adam_cfg = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                             "weight_decay": cfg["weight_decay"]}
            self.adam_t = 0
            self.progress = {"step": 0, "epoch": 0, "window": 0, "elapsed_secs": 0.0,
                             "tokens_seen": 0, "best_val": None, "history": [], "lr_scale": 1.0,
                             "rng": pcg32_seed_from_u64(cfg["seed"] ^ 0x9E3779B97F4A7C15),
                             "loss_acc": [0.0, 0]}
            self.saved_state = None
            self.saved_moments = None
        if not (self.cfg["max_steps"] or self.cfg["epochs"] or self.cfg["max_minutes"]):
            raise Fatal("give a limit: --max-steps, --epochs or --max-minutes")
        self.setup()

    # configuration ---------------------------------------------------------------------------

    def check_config(self, mc):
        c, d = self.cfg, self.d
        def bad(flag, msg):
            raise Fatal(f"invalid {flag}: {msg}")
        for flag, v, hi in [("batch", c["batch"], 1 << 16), ("seq", c["seq"], 1 << 16),
                            ("layers", mc["layers"], 64), ("hidden", mc["hidden"], 1 << 14),
                            ("embed", mc["embed"], 1 << 14)]:
            if not 1 <= v <= hi:
                bad(flag, f"{v} is outside 1..={hi}")
        if c["batch"] * c["seq"] > MAX_WINDOW_TOKENS:
            bad("batch", f"batch x seq = {c['batch'] * c['seq']} is more than {MAX_WINDOW_TOKENS} tokens per window")
        if not (math.isfinite(c["lr"]) and c["lr"] > 0):
            bad("lr", f"{c['lr']} must be a positive number")
        if not 0 <= c["min_lr_ratio"] <= 1:
            bad("min-lr-ratio", "must be in [0, 1]")
        if not c["weight_decay"] >= 0:
            bad("weight-decay", "must be >= 0")
        if not c["clip"] >= 0:
            bad("clip", "must be >= 0 (0 disables clipping)")
        if not 0 <= mc["dropout"] < 1:
            bad("dropout", f"{mc['dropout']} is outside [0, 1)")
        if mc["tie_weights"] and mc["embed"] != mc["hidden"]:
            bad("tie-weights", f"tied weights need embed = hidden, got embed {mc['embed']} and hidden {mc['hidden']}")
        if c["max_steps"] is not None and c["max_steps"] < 1:
            bad("max-steps", "must be at least 1")
        for k in ("epochs", "max_minutes"):
            if c[k] is not None and not (math.isfinite(c[k]) and c[k] > 0):
                bad(k.replace("_", "-"), "must be a positive number")
        if not c["name"] or "/" in c["name"] or "\\" in c["name"]:
            bad("name", "must be a non-empty file name without slashes")
        if c["batch"] % d.world:
            bad("batch", f"{c['batch']} streams cannot be split evenly over {d.world} processes; "
                "give a multiple of the process count")

    def load_resume(self, path, given):
        args = self.args
        try:
            tensors, meta = load_checkpoint(path)
        except (OSError, CheckpointError) as e:
            raise Fatal(str(e)) from None
        def err(msg):
            return Fatal(f"{path}: {msg}")
        if meta.get("kind") != "full":
            raise err("holds weights only (no optimizer state); it can be sampled from but not resumed")
        try:
            old, mc, prog = meta["train"], meta["model"], meta["progress"]
            corpus, adam, adam_t = meta["corpus"], meta["adam"], int(meta["adam_t"])
            tok = meta["tokenizer"]
        except (KeyError, TypeError, ValueError) as e:
            raise err(f"metadata has no training record: {e}") from None
        # quill's regularisers beyond element-wise dropout are not implemented here: refuse
        # rather than continue a different run.
        unsupported = [f"{k} {old[k]}" for k in ("dropout_input", "dropout_embed", "weight_drop", "ema",
                                                 "sampled_softmax", "shift_windows")
                       if old.get(k)]
        if old.get("dropout_mask", "element") != "element":
            unsupported.append(f"dropout_mask {old['dropout_mask']}")
        if unsupported:
            raise err("was trained with " + ", ".join(unsupported) + ", which the PyTorch trainer does "
                      "not implement (element-wise dropout only, no weight average, full softmax, fixed windows); continue "
                      "it with `quill train --resume`, or train with those off (quill train --dropout-mask "
                      "element --dropout-input 0 --dropout-embed 0 --weight-drop 0 --ema 0 "
                      "--sampled-softmax 0 --shift-windows false)")
        if corpus.get("fingerprint") != self.tf.meta["fingerprint"]:
            raise err(f"was trained on a different corpus (fingerprint {corpus.get('fingerprint', '')[:12]}…, "
                      f"{args.tokens} has {self.tf.meta['fingerprint'][:12]}…); resume with the original corpus")
        if tok != self.tf.tokenizer_json:
            raise err(f"the tokens in {args.tokens} were made with another tokenizer than the model's")
        info = self.tf.corpus_info()
        if (corpus.get("train_tokens"), corpus.get("val_tokens")) != (info["train_tokens"], info["val_tokens"]):
            raise err(f"was trained on {corpus.get('train_tokens')} training and {corpus.get('val_tokens')} "
                      f"validation tokens, but {args.tokens} has {info['train_tokens']} and {info['val_tokens']}")
        for flag, v in [("layers", mc["layers"]), ("hidden", mc["hidden"]), ("embed", mc["embed"])]:
            if given(flag) and getattr(args, flag) != v:
                raise err(f"the checkpoint has {flag} {v}, but --{flag} {getattr(args, flag)} was given; "
                          "a resumed run keeps the checkpoint's architecture")
        if given("forget_bias"):
            raise err(f"--forget-bias {args.forget_bias} only initialises a new model; a resumed run "
                      "goes on from the checkpoint's weights")
        cfg = dict(old)
        for field, flag in CONFIG_FLAGS.items():
            if given(flag):
                cfg[field] = getattr(args, flag)
        # As quill train: this run writes to --out (or its default), never to a directory
        # named inside a checkpoint that may come from anyone.
        cfg["out"] = args.out or DEFAULTS["out"]
        if given("max_steps") or given("epochs") or given("max_minutes"):
            cfg.update(max_steps=args.max_steps, epochs=args.epochs, max_minutes=args.max_minutes)
        for k in ("batch", "seq", "seed"):
            if cfg[k] != old[k]:
                raise err(f"was trained with {k} {old[k]}; resuming with {k} {cfg[k]} would not continue the same run")
        self.cfg = cfg
        self.check_config(mc)
        self.model = QuillLM(mc["vocab"], mc["embed"], mc["hidden"], mc["layers"], mc["dropout"],
                             mc.get("tie_weights", False))
        if mc["vocab"] != self.tf.vocab:
            raise err(f"the model's vocabulary is {mc['vocab']}, the token file's {self.tf.vocab}")
        try:
            self.model.load_named(tensors)
            shapes = {k: list(v.shape) for k, v in self.model.state_dict().items()}
            for name, shape in shapes.items():
                for pre in ("", "optim.m.", "optim.v."):
                    if pre + name not in tensors:
                        raise KeyError(f"missing tensor {pre + name!r}")
                    if list(tensors[pre + name].shape) != shape:
                        raise KeyError(f"tensor {pre + name!r} has shape {list(tensors[pre + name].shape)}, expected {shape}")
            L, B, H = mc["layers"], old["batch"], mc["hidden"]
            for n in ("state.h", "state.c"):
                if list(tensors.get(n, np.zeros(0)).shape) != [L, B, H]:
                    raise KeyError(f"tensor {n!r} missing or not of shape {[L, B, H]}")
        except (KeyError, RuntimeError) as e:
            raise err(str(e).strip('"')) from None
        self.adam_cfg, self.adam_t, self.progress = dict(adam), adam_t, dict(prog)
        self.saved_state = (tensors["state.h"], tensors["state.c"])
        self.saved_moments = tensors
        self.resumed_from = path

    # set-up ----------------------------------------------------------------------------------

    def setup(self):
        c, d = self.cfg, self.d
        n = len(self.train_tokens)
        b, t = c["batch"], c["seq"]
        if n < b * (t + 1):
            raise Fatal(f"{self.args.tokens}: training split: {n} tokens is too few for batch {b} and seq {t}: "
                        f"need at least {b * (t + 1)} (B x (T + 1)); use a smaller --batch or --seq or a larger corpus")
        self.stream_len = n // b
        self.windows = (self.stream_len - 1) // t
        if self.progress["window"] >= self.windows:
            raise Fatal(f"the checkpoint's data cursor (window {self.progress['window']}) lies past this "
                        f"corpus's {self.windows} windows per epoch")
        self.local_b = b // d.world
        self.streams = np.arange(d.rank * self.local_b, (d.rank + 1) * self.local_b, dtype=np.int64)
        self.model.to(d.device)
        m = self.model
        self.trainable = [(n_, p) for n_, p in m.named_parameters() if p.requires_grad]
        a = self.adam_cfg
        self.opt = torch.optim.AdamW([p for _, p in self.trainable], lr=c["lr"],
                                     betas=(a["beta1"], a["beta2"]), eps=a["eps"],
                                     weight_decay=a["weight_decay"])
        if self.saved_moments is not None:
            ms = self.saved_moments
            for name, p in self.trainable:
                mv = [np.asarray(ms[f"optim.{k}.{name}"]) for k in ("m", "v")]
                if name.startswith("rnn.bias_ih"):
                    hh = name.replace("bias_ih", "bias_hh")
                    mv = [mv[0] + ms[f"optim.m.{hh}"], mv[1] + ms[f"optim.v.{hh}"]]
                if self.adam_t > 0:
                    self.opt.state[p] = {
                        "step": torch.tensor(float(self.adam_t)),
                        "exp_avg": torch.as_tensor(mv[0], dtype=torch.float32).to(d.device).clone(),
                        "exp_avg_sq": torch.as_tensor(mv[1], dtype=torch.float32).to(d.device).clone()}
        if self.saved_state is not None:
            sl = slice(d.rank * self.local_b, (d.rank + 1) * self.local_b)
            self.state = tuple(torch.as_tensor(np.asarray(s)[:, sl, :]).to(d.device).contiguous()
                               for s in self.saved_state)
        else:
            self.state = m.zero_state(self.local_b, d.device)
        if d.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.args.tf32
            torch.backends.cudnn.allow_tf32 = self.args.tf32
        if d.on:
            ids = [d.local_rank] if d.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(m, device_ids=ids)
        else:
            self.ddp = m
        if d.main:
            os.makedirs(c["out"], exist_ok=True)
            probe = os.path.join(c["out"], ".quill-write-test")
            try:
                with open(probe, "w"):
                    pass
                os.unlink(probe)
            except OSError as e:
                raise Fatal(f"{c['out']}: cannot write checkpoints there: {e}") from None

    # pieces of quill's loop ------------------------------------------------------------------

    def planned_fraction(self):
        c, p = self.cfg, self.progress
        f = None
        def upd(v):
            nonlocal f
            f = v if f is None else max(f, v)
        if c["max_steps"]:
            upd(p["step"] / c["max_steps"])
        if c["epochs"]:
            upd((p["epoch"] + p["window"] / self.windows) / c["epochs"])
        if c["max_minutes"]:
            upd(p["elapsed_secs"] / (c["max_minutes"] * 60.0))
        return f

    def planned_steps(self):
        c = self.cfg
        by_epochs = math.ceil(c["epochs"] * self.windows) if c["epochs"] else None
        vals = [v for v in (c["max_steps"], by_epochs) if v]
        return min(vals) if vals else None

    def batch(self, w):
        """Window w of this rank's streams: x, y (T, B/R) time-major."""
        t = self.cfg["seq"]
        idx = (self.streams * self.stream_len + w * t)[None, :] + np.arange(t + 1, dtype=np.int64)[:, None]
        win = torch.from_numpy(np.asarray(self.train_tokens[idx], dtype=np.int64)).to(self.d.device)
        return win[:-1], win[1:]

    def autocast(self):
        if self.args.amp == "bf16":
            return torch.autocast(device_type=self.d.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.d.device.type, enabled=False)

    def validate(self):
        """Validation loss over the held-out split (quill's `Trainer::validate`), the B streams
        shared among the processes; None without one."""
        c, d = self.cfg, self.d
        n = len(self.val_tokens)
        b = min(max(c["batch"], 1), max(n - 1, 1))
        share = range(d.rank * b // d.world, (d.rank + 1) * b // d.world)
        with self.autocast():
            s, k = evaluate(self.model, self.val_tokens, c["batch"], c["seq"], d.device, share)
        s, k = d.sum([s, float(k)])
        return s / k if k > 0 else None

    def meta(self, kind):
        c, m = self.cfg, self.model
        return {
            "kind": kind,
            "model": m.config,
            "tokenizer": self.tf.tokenizer_json,
            "corpus": self.tf.corpus_info(),
            "quill_version": self.tf.meta.get("quill_version", "0.1.0"),
            "train": {k: c[k] for k in ("batch", "seq", "lr", "warmup_steps", "schedule", "min_lr_ratio",
                                        "weight_decay", "clip", "seed", "val_fraction", "eval_every",
                                        "save_every", "max_steps", "epochs", "max_minutes", "name", "out")}
            | {"forget_bias": c.get("forget_bias", DEFAULTS["forget_bias"])},
            "progress": self.progress,
            "adam": self.adam_cfg,
            "adam_t": self.adam_t,
            "writer": {"program": f"quill_torch {__version__}", "torch": torch.__version__,
                       "processes": self.d.world, "backend": self.d.backend,
                       "device": self.d.device.type, "amp": self.args.amp},
        }

    def path(self, which):
        return os.path.join(self.cfg["out"], f"{self.cfg['name']}-{which}.safetensors")

    def save(self, which):
        """Writes OUT/NAME-{which}.safetensors (full: weights, Adam moments, carried state).
        Every process takes part (the carried state is gathered); the first writes."""
        d = self.d
        h, c = (d.gather_streams(s) for s in self.state)
        if not d.main:
            return None
        m = self.model
        tensors = {k: v.detach().float().cpu().numpy() for k, v in m.named_tensors().items()}
        if not all(np.isfinite(v).all() for v in tensors.values()):
            self.warn(f"refusing to write {self.path(which)}: the weights contain NaN or infinity")
            return None
        params = dict(m.named_parameters())
        params["out.weight"] = m.out.weight
        for name in quill_param_names(m.config):
            p = params.get(name)
            st = self.opt.state.get(p, {}) if p is not None else {}
            for k, key in (("m", "exp_avg"), ("v", "exp_avg_sq")):
                v = st.get(key)
                tensors[f"optim.{k}.{name}"] = (v.detach().float().cpu().numpy() if v is not None
                                                else np.zeros(tensors[name].shape, np.float32))
        tensors["state.h"] = h.float().cpu().numpy()
        tensors["state.c"] = c.float().cpu().numpy()
        path = self.path(which)
        try:
            save_checkpoint(path, tensors, self.meta("full"))
        except (OSError, ValueError) as e:
            self.warn(f"could not write checkpoint: {path}: {e}; training continues in memory and "
                      "the next save tries again (the previous file, if any, is intact)")
            return None
        return path

    def log_metrics(self, line):
        if not self.d.main:
            return
        path = os.path.join(self.cfg["out"], f"{self.cfg['name']}-metrics.jsonl")
        for k, v in list(line.items()):
            if isinstance(v, float) and not math.isfinite(v):
                line[k] = None
        try:
            with open(path, "a") as f:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
        except OSError as e:
            self.warn(f"metrics log: {path}: {e}")

    def say(self, msg):
        if self.d.main:
            print(msg, file=sys.stderr, flush=True)

    def warn(self, msg):
        self.say(f"warning: {msg}")

    def eval_and_record(self):
        p = self.progress
        val = self.validate()
        s, n = p["loss_acc"]
        train_loss = s / n if n > 0 else None
        p["loss_acc"] = [0.0, 0]
        if train_loss is not None:
            p["history"].append({"step": p["step"], "train_loss": train_loss, "val_loss": val})
        self.log_metrics({"kind": "eval", "step": p["step"], "train_loss": train_loss, "val_loss": val,
                          "elapsed_s": p["elapsed_secs"]})
        if val is not None:
            best = p["best_val"] is None or val < p["best_val"]
            if best:
                p["best_val"] = val
            self.say(f"step {p['step']}: val loss {val:.4f} nats/token{' (best)' if best else ''}")
            if best:
                self.save("best")
        return val

    # the loop ---------------------------------------------------------------------------------

    def run(self):
        c, d, p, a = self.cfg, self.d, self.progress, self.args
        stop = {"n": 0}
        def on_signal(signum, frame):
            stop["n"] += 1
            if stop["n"] > 1:
                raise KeyboardInterrupt
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        m = self.model
        nparams = sum(x.numel() for _, x in self.trainable)
        planned = self.planned_steps()
        self.say(f"model {nparams} parameters; {len(self.train_tokens)} training / {len(self.val_tokens)} "
                 f"validation tokens; {self.windows} windows per epoch"
                 + (f"; from step {p['step']}" if p["step"] else "")
                 + (f"; {planned} steps planned" if planned else "")
                 + f"; {d.world} process(es), {d.device.type}, backend {d.backend}, amp {a.amp}")
        start_step, start_elapsed = p["step"], p["elapsed_secs"]
        t0 = time.monotonic()
        bad, reason, last_val = 0, "limit reached", None
        n_tok = c["batch"] * c["seq"]
        params = [x for _, x in self.trainable]
        max_norm = c["clip"] if c["clip"] > 0 else float("inf")
        m.train()
        while True:
            frac = self.planned_fraction()
            if frac is not None and frac >= 1.0:
                break
            if a.steps_this_run is not None and p["step"] - start_step >= a.steps_this_run:
                reason = "steps for this run done"
                break
            # quill's Trainer::train_step
            x, y = self.batch(p["window"])
            if m.config["dropout"] > 0:
                torch.manual_seed(dropout_seed(c["seed"], p["step"], d.rank))
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                logits, st = self.ddp(x, self.state)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            self.state = tuple(s.detach().float() for s in st)
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            lr = f32(schedule_lr(c, p["step"], frac or 0.0) * f32(p["lr_scale"]))
            elapsed0 = start_elapsed + (time.monotonic() - t0) if d.main else 0.0
            loss_sum, nonfinite, stops, elapsed = d.sum(
                [loss.item(), 0.0 if math.isfinite(norm) else 1.0, float(stop["n"] > 0), elapsed0])
            loss_v = loss_sum / d.world
            ok = math.isfinite(loss_v) and nonfinite == 0
            if ok:
                for g in self.opt.param_groups:
                    g["lr"] = lr
                self.opt.step()
                self.adam_t += 1
            p["step"] += 1
            p["tokens_seen"] += n_tok
            p["window"] += 1
            if p["window"] >= self.windows:
                p["window"] = 0
                p["epoch"] += 1
                self.state = tuple(torch.zeros_like(s) for s in self.state)
            p["elapsed_secs"] = elapsed
            step = p["step"]
            if not ok:
                bad += 1
                self.state = tuple(torch.zeros_like(s) for s in self.state)
                p["lr_scale"] = f32(p["lr_scale"] * 0.5)
                if bad >= 5:
                    raise Fatal(f"{bad} non-finite losses in a row up to step {step}; the checkpoints "
                                f"in {c['out']} are from before; try a lower --lr")
                self.warn(f"step {step}: non-finite loss or gradient; update skipped, state reset, "
                          f"learning rate scaled to {p['lr_scale']}x")
                continue
            bad = 0
            p["loss_acc"][0] += loss_v
            p["loss_acc"][1] += 1
            secs = max(time.monotonic() - t0, 1e-9)
            tps = (step - start_step) * n_tok / secs
            epoch = p["epoch"] + p["window"] / self.windows
            if step % 10 == 0:
                self.log_metrics({"kind": "train", "step": step, "epoch": epoch, "loss": loss_v, "lr": lr,
                                  "grad_norm": norm, "tokens_per_s": tps, "elapsed_s": p["elapsed_secs"]})
            if a.log_every > 0 and step % a.log_every == 0:
                self.say(f"step {step} ep {epoch:.2f} loss {loss_v:.4f} lr {lr:.2e} {tps:.0f} tok/s")
            if c["eval_every"] > 0 and step % c["eval_every"] == 0:
                last_val = self.eval_and_record()
            if c["save_every"] > 0 and step % c["save_every"] == 0:
                self.save("latest")
            if stops > 0:
                reason = "stopped by request"
                break
        if p["step"] > start_step or last_val is None:
            hist = p["history"]
            if not (hist and hist[-1]["step"] == p["step"]):
                last_val = self.eval_and_record()
            else:
                last_val = hist[-1]["val_loss"]
        latest = self.save("latest")
        secs = max(time.monotonic() - t0, 1e-9)
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        self.say(f"done: {p['step']} steps ({p['step'] - start_step} this run, {reason}), "
                 f"{(p['step'] - start_step) * n_tok / secs:.0f} tokens/s; final val loss {fmt(last_val)}; "
                 f"best {fmt(p['best_val'])}")
        if latest:
            self.say(f"latest checkpoint: {latest}")
        if p["best_val"] is not None:
            self.say(f"best checkpoint:   {self.path('best')}")
        return 130 if stop["n"] else 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    d = None
    try:
        d = Dist(args.device)
        code = Run(args, d).run()
    except Fatal as e:
        if d is None or d.main:
            print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        if d is not None:
            d.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
