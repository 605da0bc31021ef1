"""torch.compile set-up against eager steps for the default unet2d (batch 8 of 256^2, bf16 autocast, Adam).

    PYTHONPATH=src .venv/bin/python benchmarks/compile_setup.py

Prints the eager step time, the first compiled step (the set-up) and the next ones (docs/BENCHMARKS.md,
"Training route"; the reason the route probe tries torch.compile only for long budgets).
"""
import time, torch
from emseg.models import build_model
torch.set_num_threads(2)
m = build_model("unet2d", in_channels=1, num_classes=2, options={})
opt = torch.optim.Adam(m.parameters())
x = torch.randn(8,1,256,256); y = torch.randint(0,2,(8,256,256))
def step(mod):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mod(x)
    loss = torch.nn.functional.cross_entropy(out.float(), y); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(2): step(m)
t=time.perf_counter(); [step(m) for _ in range(3)]; e=(time.perf_counter()-t)/3; print("eager bf16", e, flush=True)
c = torch.compile(m)  # noqa: the wrapped module shares the weights
t=time.perf_counter(); step(c); print("compile first step", time.perf_counter()-t, flush=True)
t=time.perf_counter(); step(c); print("compile 2nd", time.perf_counter()-t, flush=True)
t=time.perf_counter(); [step(c) for _ in range(3)]; print("compiled", (time.perf_counter()-t)/3, flush=True)
