"""quill's model in PyTorch: nn.Embedding (V, E) -> nn.LSTM (L layers, H) -> dropout -> nn.Linear
(H -> V), with the module names of quill's checkpoints (`embed`, `rnn`, `out`), so the
state dict IS the checkpoint's tensor set.

Semantics kept identical to quill (src/nn/model.rs):
- dropout (inverted) on every LSTM layer's output: nn.LSTM's `dropout` between layers, plus
  one nn.Dropout on the top layer's output; none on the embedding;
- one bias per layer: quill's bias is `bias_ih`; `bias_hh` is held at zero and not trained
  (two trained biases would receive two Adam updates per step where quill makes one);
- tied weights share the embedding table with the output layer (E = H);
- initialisation: embedding N(0, 1) (U(-0.1, 0.1) when tied), LSTM and output weights
  U(-1/sqrt(H), 1/sqrt(H)), biases zero except the forget gate's (rows H..2H), which is 1 (or `forget_bias`).
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class QuillLM(nn.Module):
    def __init__(self, vocab, embed, hidden, layers, dropout=0.0, tie_weights=False):
        super().__init__()
        if tie_weights and embed != hidden:
            raise ValueError(f"tied weights need embed = hidden, got embed {embed} and hidden {hidden}")
        self.config = dict(vocab=vocab, embed=embed, hidden=hidden, layers=layers,
                           dropout=float(dropout), tie_weights=bool(tie_weights))
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)
        if tie_weights:
            self.out.weight = self.embed.weight
        for k in range(layers):
            getattr(self.rnn, f"bias_hh_l{k}").requires_grad_(False)

    @torch.no_grad()
    def init_weights(self, forget_bias=1.0):
        c = self.config
        h = c["hidden"]
        if c["tie_weights"]:
            self.embed.weight.uniform_(-0.1, 0.1)
        else:
            self.embed.weight.normal_(0.0, 1.0)
        k = 1.0 / math.sqrt(h)
        for l in range(c["layers"]):
            getattr(self.rnn, f"weight_ih_l{l}").uniform_(-k, k)
            getattr(self.rnn, f"weight_hh_l{l}").uniform_(-k, k)
            b = getattr(self.rnn, f"bias_ih_l{l}")
            b.zero_()
            b[h:2 * h] = forget_bias
            getattr(self.rnn, f"bias_hh_l{l}").zero_()
        if not c["tie_weights"]:
            self.out.weight.uniform_(-k, k)
        self.out.bias.zero_()

    def forward(self, x, state):
        """x: (T, B) token ids; state: (h, c), each (L, B, H). Returns logits (T, B, V) and the
        new state."""
        y, state = self.rnn(self.embed(x), state)
        return self.out(self.drop(y)), state

    def loss(self, x, y, state):
        """Mean cross-entropy (nats/token) over the window, and the new state."""
        logits, state = self(x, state)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1)), state

    def zero_state(self, b, device):
        c = self.config
        z = torch.zeros(c["layers"], b, c["hidden"], device=device)
        return z, z.clone()

    def named_tensors(self):
        """Every tensor of a quill checkpoint's model part, by its quill name (a tied model
        lists `out.weight` too, a copy of `embed.weight`, as quill writes it)."""
        return dict(self.state_dict())

    @torch.no_grad()
    def load_named(self, tensors):
        """Loads quill-named tensors (numpy or torch); the two LSTM biases are summed into
        `bias_ih` (quill's one bias), so checkpoints from quill or from PyTorch both load."""
        c = self.config
        def t(name):
            if name not in tensors:
                raise KeyError(f"missing tensor {name!r}")
            return torch.as_tensor(tensors[name], dtype=torch.float32)
        self.embed.weight.copy_(t("embed.weight"))
        for l in range(c["layers"]):
            for kind in ("weight_ih", "weight_hh"):
                getattr(self.rnn, f"{kind}_l{l}").copy_(t(f"rnn.{kind}_l{l}"))
            getattr(self.rnn, f"bias_ih_l{l}").copy_(t(f"rnn.bias_ih_l{l}") + t(f"rnn.bias_hh_l{l}"))
            getattr(self.rnn, f"bias_hh_l{l}").zero_()
        if not c["tie_weights"]:
            self.out.weight.copy_(t("out.weight"))
        self.out.bias.copy_(t("out.bias"))


def quill_param_names(config):
    """The names quill's Adam moments are stored under (src/nn/model.rs `Params::to_named`)."""
    names = ["embed.weight"]
    for l in range(config["layers"]):
        names += [f"rnn.weight_ih_l{l}", f"rnn.weight_hh_l{l}", f"rnn.bias_ih_l{l}",
                  f"rnn.bias_hh_l{l}"]
    return names + ["out.weight", "out.bias"]


@torch.no_grad()
def evaluate(model, tokens, b, t, device, streams=None):
    """quill's `evaluate_tokens` (src/train/trainer.rs): `tokens` as b streams of
    S = len // b tokens, windows of t steps from a zero state, the last partial window
    included. `streams` (a range) evaluates only those streams (a rank's share). Returns
    (sum of nats, tokens scored) over those streams."""
    n = len(tokens)
    if n < 2:
        return 0.0, 0
    b = min(max(b, 1), max(n - 1, 1))
    s = n // b
    if s < 2:
        return 0.0, 0
    streams = range(b) if streams is None else streams
    if len(streams) == 0:
        return 0.0, 0
    was_training = model.training
    model.eval()
    ids = np.asarray(streams, dtype=np.int64)[None, :] * s
    state = model.zero_state(len(streams), device)
    total, count, pos = 0.0, 0, 0
    while pos + 1 < s:
        ln = min(t, s - 1 - pos)
        idx = ids + pos + np.arange(ln + 1, dtype=np.int64)[:, None]  # (ln + 1, b)
        w = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
        logits, state = model(w[:-1], state)
        rows = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[1:].reshape(-1),
                               reduction="none")
        total += rows.double().sum().item()
        count += ln * len(streams)
        pos += ln
    model.train(was_training)
    return total, count
