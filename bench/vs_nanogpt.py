"""testbed's train step beside nanoGPT's (PyTorch, eager) at one shape on this CPU, interleaved: prints JSON.

    python bench/vs_nanogpt.py --torch-python /path/to/venv-with-torch/bin/python [--rounds 3] [--steps 20]
        [--cpus 0] [--profile]

The shape is the reference one (bench/train_step.py at d_model 256): 4 layers, 4 heads of 64, seq 256, batch 16,
vocab 256, float32, GELU MLP of 4 d, no biases, untied readout, AdamW with weight decay, no dropout. nanoGPT's
model is its model.py reduced to that configuration (causal attention through
torch.nn.functional.scaled_dot_product_attention, as nanoGPT does with flash available). PyTorch is not a
dependency of the project: pass an interpreter that has it (`pip install torch` in a separate venv).
Each round times both in fresh processes, one after the other, so the two see the same machine state. `--cpus`
pins both to those cores (both size their thread pools from the affinity mask): one core compares the kernels
without either library's multi-threading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from testbed import hardware

TORCH_STEP = r'''
import json, math, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
D, L, H, T, B, V, steps = 256, 4, 4, 256, 16, 256, int(sys.argv[1])

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D, bias=False), nn.LayerNorm(D, bias=False)
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)

    def forward(self, x):
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, D)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))

class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f, self.lm_head = nn.LayerNorm(D, bias=False), nn.Linear(D, V, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))

model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
x = torch.randint(0, V, (B, T)); y = torch.randint(0, V, (B, T))
def step():
    loss = model(x, y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); return loss
for _ in range(3):
    step()
times = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
times.sort()
out = {"tokens_per_s": B * T / times[len(times) // 2], "torch": torch.__version__, "threads": torch.get_num_threads()}
if sys.argv[2:] == ["profile"]:  # self time per op, ms per step, over 5 steps
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    out["ops_ms_per_step"] = {e.key: round(e.self_cpu_time_total / 5e3, 1) for e in ops[:12]}
    out["all_ops_ms_per_step"] = round(sum(e.self_cpu_time_total for e in ops) / 5e3, 1)
print(json.dumps(out))
'''

TESTBED_SETS = ["train.steps=100", "model.d_model=256", "model.n_layers=4", "model.n_heads=4", "model.vocab_size=256",
                "data.seq_len=256", "train.batch_size=16", "model.pos=learned", "model.norm=layernorm"]


def run(cmd: list[str], cpus: set[int] | None = None) -> dict:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    r = subprocess.run(cmd, capture_output=True, text=True, check=True, preexec_fn=pin)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", required=True, help="an interpreter with torch installed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cpus", default="", help="pin both to these cores, e.g. 0 or 0,1 (default: every core)")
    ap.add_argument("--profile", action="store_true", help="then profile one step of each: testbed's by op category "
                    "(bench/profile_step.py), nanoGPT's by op (torch.profiler)")
    args = ap.parse_args()
    cpus = {int(c) for c in args.cpus.split(",") if c.strip()} or None
    testbed_cmd = [sys.executable, "-m", "testbed.launch.cli", "bench", "--steps", str(args.steps), "--json",
                   *[x for kv in TESTBED_SETS for x in ("--set", kv)]]
    rounds = []
    for _ in range(args.rounds):
        ours = run(testbed_cmd, cpus)
        theirs = run([args.torch_python, "-c", TORCH_STEP, str(args.steps)], cpus)
        rounds.append({"testbed": ours["tokens_per_s"], "nanogpt": theirs["tokens_per_s"],
                       "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"]})
        print(json.dumps(rounds[-1]), flush=True)
    if args.profile:
        profile_cmd = [sys.executable, str(Path(__file__).with_name("profile_step.py")),
                       *[x for kv in TESTBED_SETS for x in ("--set", kv)]]
        ours_ms = run(profile_cmd, cpus)
        theirs_ms = run([args.torch_python, "-c", TORCH_STEP, "3", "profile"], cpus)
        print(json.dumps({"testbed_ms_per_step": ours_ms["by_category_ms"],
                          "testbed_all_ops_ms": ours_ms["total_op_ms"],
                          "nanogpt_ms_per_step": theirs_ms["ops_ms_per_step"],
                          "nanogpt_all_ops_ms": theirs_ms["all_ops_ms_per_step"]}), flush=True)
    ratios = sorted(r["ratio"] for r in rounds)
    print(json.dumps({"machine": hardware.machine(),
                      "median_ratio_testbed_over_nanogpt": ratios[len(ratios) // 2], "rounds": len(rounds),
                      "cpus": sorted(cpus) if cpus else "all",
                      "torch": theirs["torch"], "torch_threads": theirs["threads"], "mfu": ours["mfu"]}))


if __name__ == "__main__":
    main()
