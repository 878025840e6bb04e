#!/usr/bin/env python3
"""Generate tests/data/torch_golden.safetensors: PyTorch reference values for
quill's embedding -> 2-layer LSTM -> linear -> cross-entropy stack.

Run from the repository root with the peer venv:

    /tmp/peer/bin/python tests/data/make_torch_golden.py

This script is the source of the golden values; do not edit the .safetensors
file by hand. Everything runs on the CPU in float64; the stored tensors are
float32. Parameters and initial states are rounded to float32 *before* the
float64 computation, so the stored inputs are exactly the values the
reference outputs were computed from.

Shapes: T=4 (time), B=3 (batch), V=7 (vocab), E=4 (embed), H=5 (hidden),
L=2 (layers). batch_first=False, so sequences are (T, B, ...).
PyTorch LSTM conventions: weight_ih_l{k} is (4H, in), weight_hh_l{k} is
(4H, H), both biases (4H,); the gate blocks along the 4H axis are in the
order i, f, g, o:
    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')
Loss: mean cross-entropy over all T*B positions.
"""

import os

import torch
from torch import nn
from torch.nn import functional as F
from safetensors.torch import load_file, save_file

T, B, V, E, H, L = 4, 3, 7, 4, 5, 2
SEED = 1234
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_golden.safetensors")


def f32_exact(t: torch.Tensor) -> torch.Tensor:
    """Round a float64 tensor to the nearest float32 value, keep float64 dtype."""
    return t.to(torch.float32).to(torch.float64)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, E)
        self.rnn = nn.LSTM(E, H, num_layers=L)  # batch_first=False
        self.out = nn.Linear(H, V)

    def forward(self, x, state):
        o, (h_n, c_n) = self.rnn(self.embed(x), state)  # o: (T, B, H)
        return self.out(o), h_n, c_n  # logits: (T, B, V)


def main():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    model = Model().to(torch.float64)
    with torch.no_grad():
        # Every parameter, in state-dict order, uniform in [-0.5, 0.5].
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
            p.copy_(f32_exact(p))

    x = torch.randint(0, V, (T, B))  # int64 tokens
    y = torch.randint(0, V, (T, B))
    h0 = f32_exact(torch.empty(L, B, H, dtype=torch.float64).uniform_(-0.5, 0.5))
    c0 = f32_exact(torch.empty(L, B, H, dtype=torch.float64).uniform_(-0.5, 0.5))

    logits, h_n, c_n = model(x, (h0, c0))
    loss = F.cross_entropy(logits.reshape(T * B, V), y.reshape(T * B), reduction="mean")
    model.zero_grad()
    loss.backward()

    def f32(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.float32).contiguous()

    tensors = {}
    state = model.state_dict()
    names = list(state.keys())
    expected_names = [
        "embed.weight",
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "rnn.bias_ih_l0",
        "rnn.bias_hh_l0",
        "rnn.weight_ih_l1",
        "rnn.weight_hh_l1",
        "rnn.bias_ih_l1",
        "rnn.bias_hh_l1",
        "out.weight",
        "out.bias",
    ]
    assert names == expected_names, names
    params = dict(model.named_parameters())
    for name in names:
        tensors[name] = f32(state[name])
        tensors["grad." + name] = f32(params[name].grad)
    tensors["input.x"] = f32(x.to(torch.float64))
    tensors["input.y"] = f32(y.to(torch.float64))
    tensors["input.h0"] = f32(h0)
    tensors["input.c0"] = f32(c0)
    tensors["expected.logits"] = f32(logits)
    tensors["expected.loss"] = f32(loss.reshape(1))
    tensors["expected.h_n"] = f32(h_n)
    tensors["expected.c_n"] = f32(c_n)

    save_file(tensors, OUT)

    # Reload and compare bit for bit.
    back = load_file(OUT)
    assert sorted(back.keys()) == sorted(tensors.keys())
    for k, v in tensors.items():
        assert back[k].dtype == torch.float32, k
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k
    # The stored float32 inputs are exact copies of what was computed on.
    for name in names:
        assert torch.equal(back[name].to(torch.float64), state[name]), name
    assert torch.equal(back["input.h0"].to(torch.float64), h0)
    assert torch.equal(back["input.c0"].to(torch.float64), c0)
    assert torch.equal(back["input.x"].to(torch.int64), x)

    torch.set_printoptions(precision=8, sci_mode=False)
    print(f"torch {torch.__version__}, wrote {OUT} ({len(tensors)} tensors)")
    print("x =", x.tolist())
    print("y =", y.tolist())
    print("logits (T, B, V) =")
    print(logits.detach())
    print(f"loss = {loss.item():.10f}")
    print("reload check: OK")


if __name__ == "__main__":
    main()
