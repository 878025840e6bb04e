"""Load a quill checkpoint into PyTorch (strict load_state_dict) and run one forward pass.
usage: python scripts/load_in_pytorch.py checkpoints/NAME-best.safetensors   (needs torch + safetensors)"""
import sys, json, torch, torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file
path = sys.argv[1]
with safe_open(path, "pt") as f:
    meta = json.loads(f.metadata()["quill_meta"])
c = meta["model"]
class LM(nn.Module):
    def __init__(s):
        super().__init__(); s.embed = nn.Embedding(c["vocab"], c["embed"])
        s.rnn = nn.LSTM(c["embed"], c["hidden"], c["layers"]); s.out = nn.Linear(c["hidden"], c["vocab"])
m = LM()
sd = {k: v for k, v in load_file(path).items() if not k.startswith(("optim.", "state.", "train."))}
print(m.load_state_dict(sd, strict=True))
tok = json.loads(meta["tokenizer"]); chars = tok["chars"]
x = torch.tensor([[chars.index(ch)] for ch in "ROMEO:"])
y, _ = m.rnn(m.embed(x)); logits = m.out(y)
print("torch next-char after 'ROMEO:' top5:", [chars[i] for i in logits[-1,0].topk(5).indices])
