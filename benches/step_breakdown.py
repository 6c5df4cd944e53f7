"""Where a DSP / NPDG training step's time goes (issue 33), beside ERM's step and the recipe's floor.

    python benches/step_breakdown.py --out benches/results/cpu_2core_step_breakdown.json [--models M ...]
        [--variants full half default] [--repeats 7] [--device cpu|cuda]

Per model and variant (``full``: the step before issue 33; ``branch``: ``dsp_branch`` at a full-resolution
adversary; ``half``: ``dsp_branch`` + ``adv_scale`` 0.5; ``default``: ``dsp_branch`` + ``adv_scale`` 0.25, the
default since issue 33; joined with ``+``, later keys win), medians over ``--repeats`` of, all measured in this one
process, interleaved round by round:
- ``erm_step``: ERM's whole step (forward, loss, backward, SGD update) on the batch;
- ``step``: the npdg step (sensitivity-weighted L1 included, a sensitivity refresh not: that is
  ``sensitivity_pass`` / ``sens_every``, reported as ``sensitivity_amortised``); ``dsp_step``: the same for dsp;
- ``no_adversary``: the npdg step with ``adv_steps`` 0 (so ``adversary`` = step − no_adversary: the ascent pass and
  its step sizing);
- ``pre_style``: forward + backward of the layers before the style point on the n restyled rows (what the copied
  path runs twice and ``branch`` saves);
- ``dvae_and_sizing``: the D-VAE loss and one step-length search on n latents (tiny MLPs);
- ``optimizer``: the SGD update alone;
- ``step_reference``: the npdg step with ``NPDG_KERNELS=reference`` (the project's custom kernels off: the fused
  C++ AdaIN on CPU, the Triton AdaIN / Gram on CUDA), side by side with ``step``; ``kernel_share``: the fraction of
  one profiled npdg step spent in the custom ops (profiler events ``npdg::*`` and the Triton kernels ``_adain_*``
  / ``_style_cov_*``; device time on CUDA, self CPU time on CPU);
- ``floor``: the recipe's own work: the training pass on N clean + n restyled rows with the layers before the
  style point run once (the ``branch`` variant without its adversary), i.e. what no implementation of the recipe
  can skip; ``step / floor`` and ``step / erm_step`` are the ratios the issue tracks.
Batch 8 at 96x192 fp32 on a CPU (the default run's shape), 512x512 bf16 on CUDA; ``NPDG_KERNELS`` applies.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benches.conftest import env_info, sync  # noqa: E402
from npdg.config import Config  # noqa: E402
from npdg.dsp.perturb import num_restyled  # noqa: E402
from npdg.loop import Context  # noqa: E402
from npdg.methods import build_method  # noqa: E402
from npdg.models import create_model  # noqa: E402

VARIANTS = {  # explicit keys, so a row means the same step whatever the defaults of its day
    "full": {"dsp_branch": False, "adv_scale": 1.0},  # the step before issue 33: input copies, full-res adversary
    "branch": {"dsp_branch": True, "adv_scale": 1.0},
    "half": {"dsp_branch": True, "adv_scale": 0.5},  # issue 33's first plan (benches/results/fair_fast/PLAN.md)
    "default": {"dsp_branch": True, "adv_scale": 0.25},  # the default since issue 33's second plan (PLAN_adv025.md)
}


def variant_keys(name: str) -> dict:
    keys = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r}; known: {', '.join(VARIANTS)} (joined with +)")
        keys.update(VARIANTS[part])
    return keys


def setup(model_name, method, device, batch, size, **keys):
    torch.manual_seed(0)
    cfg = Config(method=method, model=model_name, batch_size=batch, sens_batch=min(batch, 8), device=str(device),
                 **keys).validate()
    model = create_model(model_name, num_classes=19, input_norm=cfg.input_norm).to(device).train()
    recipe = build_method(Context(cfg, device), model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, *size, device=device)
    labels = torch.randint(0, 19, (batch, *size), device=device)
    return cfg, model, recipe, opt, images, labels


def step_fn(cfg, model, recipe, opt, images, labels, amp):
    """One full training step of the method, as fit() runs it: loss (past the DSP warm-up, not a sensitivity
    refresh), backward, every optimizer; returns the loss (a tensor: no host sync)."""
    loss_fn = recipe.train_loss_fn(model)
    if cfg.method == "npdg":
        recipe.refresh_sensitivity(model, images)  # the timed steps reuse it, as between refreshes
    at = round(cfg.dsp_warmup * cfg.iters) + 2  # past the DSP warm-up, not a refresh step

    def step():
        with amp:
            loss, _ = loss_fn(model, at, images, labels)
        opt.zero_grad(set_to_none=True)
        for o in recipe.extra_opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for o in recipe.extra_opts:
            o.step()
        return loss
    return step


def pre_style_fn(model, images, n):
    """forward + backward of the layers before the style point on n rows (the forward stops there)."""
    class Stop(Exception):
        pass

    out = {}

    def hook(module, inputs, output):
        out["f"] = output
        raise Stop

    def run():
        handle = model.style_layer.register_forward_hook(hook)
        try:
            model(images[:n])
        except Stop:
            pass
        finally:
            handle.remove()
        out.pop("f").float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    return run


def dvae_fn(dsp, model, images, n):
    with torch.no_grad():
        feats = {}
        handle = model.style_layer.register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
        try:
            model(images[:max(n, 2)])  # (>= 2 rows through the head's BN)
        finally:
            handle.remove()
    from npdg.reference import style_stats

    mean, std = style_stats(feats["f"][:n])
    xi = torch.randn(n, dsp.dvae.latent, device=images.device)

    def run():
        z = dsp.posterior(mean, std, xi)
        u = torch.nn.functional.normalize(torch.randn_like(z), dim=1)
        dsp.step_lengths(z, u, dsp.adv_step_size)
        loss, _ = dsp.dvae.loss(mean, std, beta=dsp.beta)
        loss.backward()
    return run


def with_kernels(choice: str, fn):
    """fn run under NPDG_KERNELS=choice (ops.* read it on every call), restored afterwards."""
    import os

    def run():
        before = os.environ.get("NPDG_KERNELS")
        os.environ["NPDG_KERNELS"] = choice
        try:
            return fn()
        finally:
            if before is None:
                del os.environ["NPDG_KERNELS"]
            else:
                os.environ["NPDG_KERNELS"] = before
    return run


KERNEL_EVENT = re.compile(r"^npdg::|^_adain_|^_style_cov_")


def kernel_share(fn, device) -> dict:
    """{"seconds", "share", "ops"}: time of one fn() call spent in the project's custom ops (see the module doc)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.key_averages()

    def own(e):
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6

    total = sum(own(e) for e in events)
    ops = {e.key: own(e) for e in events if KERNEL_EVENT.search(e.key)}
    return {"seconds": sum(ops.values()), "share": sum(ops.values()) / total if total else None, "ops": ops}


def time_all(fns: dict, device, repeats: int, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync(device)
    samples = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved: a slow spell of the machine hits every row alike
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def breakdown(model_name, variant, device, batch, size, repeats) -> dict:
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    keys = variant_keys(variant)
    erm = setup(model_name, "erm", device, batch, size)
    npdg = setup(model_name, "npdg", device, batch, size, **keys)
    dsp = setup(model_name, "dsp", device, batch, size, **keys)
    no_adv = setup(model_name, "npdg", device, batch, size, **keys, adv_steps=0)
    floor = setup(model_name, "npdg", device, batch, size, **{**keys, "dsp_branch": True}, adv_steps=0)
    cfg, model, recipe, opt, images, labels = npdg
    n = num_restyled(cfg.dsp_p, batch)
    fns = {"erm_step": step_fn(*erm, amp), "step": step_fn(*npdg, amp), "dsp_step": step_fn(*dsp, amp),
           "no_adversary": step_fn(*no_adv, amp), "floor": step_fn(*floor, amp),
           "pre_style": pre_style_fn(model, images, n), "dvae_and_sizing": dvae_fn(recipe.dsp, model, images, n),
           "optimizer": opt.step}
    fns["step_reference"] = with_kernels("reference", fns["step"])
    t = time_all(fns, device, repeats)
    kernels = kernel_share(fns["step"], device)

    def sens():
        recipe.refresh_sensitivity(model, images)
    t["sensitivity_pass"] = time_all({"s": sens}, device, max(3, repeats // 2), warmup=1)["s"]
    t["sensitivity_amortised"] = t["sensitivity_pass"] / cfg.sens_every
    t["adversary"] = t["step"] - t["no_adversary"]
    ratios = {"step_over_erm": t["step"] / t["erm_step"], "dsp_step_over_erm": t["dsp_step"] / t["erm_step"],
              "step_over_floor": t["step"] / t["floor"], "floor_over_erm": t["floor"] / t["erm_step"],
              "step_with_sensitivity_over_erm": (t["step"] + t["sensitivity_amortised"]) / t["erm_step"]}
    ratios["step_over_step_reference"] = t["step"] / t["step_reference"]
    return {"model": model_name, "variant": variant, "keys": keys, "batch": batch, "size": list(size), "restyled": n,
            "seconds": t, "ratios": ratios, "kernels": kernels}


def markdown(data: dict) -> str:
    """The JSON of a run as a markdown table (one row per model and variant; ``vs full``: the step before issue 33
    over this step, where the run has the ``full`` variant)."""
    env = data["env"]
    cols = ["model", "variant (keys)", "erm step", "npdg step", "npdg / erm", "vs full", "floor", "npdg / floor",
            "adversary", "layers before the style point", "D-VAE + sizing", "sensitivity (amortised)", "kernels off",
            "dsp step / erm"]
    lines = ["# Where an NPDG step's time goes (issue 33), `benches/step_breakdown.py`", "",
             f"Machine: {env['device']} ({data['threads']} threads), torch {env['torch']}, {data['date']}; every row "
             "of a model measured interleaved in one process (medians). Rows name their keys.", "",
             "| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    full = {r["model"]: r["seconds"]["step"] for r in data["rows"] if r["variant"] == "full"}
    for r in data["rows"]:
        t, q = r["seconds"], r["ratios"]
        ms = {k: f"{v * 1e3:.1f} ms" if v < 0.01 else f"{v * 1e3:.0f} ms" for k, v in t.items()}
        cells = [r["model"], f"{r['variant']} ({', '.join(f'{k} {v}' for k, v in r['keys'].items())})",
                 ms["erm_step"], ms["step"], f"{q['step_over_erm']:.2f}x",
                 f"{full[r['model']] / t['step']:.2f}x" if r["model"] in full else "–", ms["floor"],
                 f"{q['step_over_floor']:.2f}x", ms["adversary"], ms["pre_style"], ms["dvae_and_sizing"],
                 ms["sensitivity_amortised"], ms["step_reference"], f"{q['dsp_step_over_erm']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "floor = the recipe's own work: the training pass on the clean and restyled rows with the layers "
              "before the style point run once, no adversary. adversary = step − the same step with adv_steps 0. "
              "kernels off = the same npdg step with NPDG_KERNELS=reference."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=["full", "half", "default"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, 33x65, one repeat")
    p.add_argument("--md", type=Path, default=None, help="also write the table as markdown (with --render: only that)")
    p.add_argument("--render", type=Path, default=None, metavar="JSON", help="render an earlier run's JSON (--md)")
    args = p.parse_args(argv)
    if args.render:
        (args.md or args.render.with_suffix(".md")).write_text(markdown(json.loads(args.render.read_text())))
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as npdg.train runs (Config.cudnn_benchmark)
    models = args.models or (["deeplabv3plus_r50", "segformer_b0"] if cuda else ["deeplabv3plus_r18", "segformer_b0"])
    batch, size = (8, (512, 512)) if cuda else (8, (96, 192))
    if args.quick:
        batch, size, args.repeats = 2, (33, 65), 1
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def save():  # after every row: a run stopped at its time cap keeps the rows it has measured
        data = {"env": env_info(device), "threads": torch.get_num_threads(), "date": date, "rows": rows}
        args.out.write_text(json.dumps(data, indent=1) + "\n")
        if args.md:
            args.md.write_text(markdown(data))

    for model_name in models:
        for variant in args.variants:
            row = breakdown(model_name, variant, device, batch, size, args.repeats)
            rows.append(row)
            save()
            s, r = row["seconds"], row["ratios"]
            print(f"{model_name} {variant}: step {s['step'] * 1e3:.1f} ms = {r['step_over_erm']:.2f}x erm "
                  f"({s['erm_step'] * 1e3:.1f} ms), {r['step_over_floor']:.2f}x floor ({s['floor'] * 1e3:.1f} ms); "
                  f"adversary {s['adversary'] * 1e3:.1f}, pre_style {s['pre_style'] * 1e3:.1f}, dvae+sizing "
                  f"{s['dvae_and_sizing'] * 1e3:.1f}, optimizer {s['optimizer'] * 1e3:.1f}, sensitivity "
                  f"{s['sensitivity_amortised'] * 1e3:.1f} amortised; kernels off {s['step_reference'] * 1e3:.1f} ms, "
                  f"custom ops {100 * (row['kernels']['share'] or 0):.1f} % of a step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
