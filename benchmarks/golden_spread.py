"""Float spread of the golden-data tests across CPU kernel choices (issue 12: CI on AVX2 and AVX-512).

    python benchmarks/golden_spread.py                       # every case under every setting (~30 min, 2 cores)
    python benchmarks/golden_spread.py --cases fomm,sr --settings native,aten-avx2,aten-default
    python benchmarks/golden_spread.py --cases mp_full --settings native,onednn-avx2 --quirks

Each setting runs in a fresh process, because ATen picks its vectorised kernels (`ATEN_CPU_CAPABILITY`),
oneDNN its convolution kernels (`ONEDNN_MAX_CPU_ISA`) and MKL its GEMM code path
(`MKL_ENABLE_INSTRUCTIONS`) once, at load time. Per setting and per compared tensor the script records
the max abs difference to the golden file; the golden tests' tolerances are set from the max over settings.

Cases (the computations of the golden tests, same calls):
  mp_full    tests/test_metaportrait_networks.py::test_golden_full_outputs
  mp_warp    tests/test_metaportrait_networks.py::test_golden_warp_only_outputs
  mp_import  tests/test_official_import.py (import-checkpoint -> load_stage -> stage(batch from landmarks))
  fomm       tests/test_fomm_golden.py (eval, relative motion, train-mode BatchNorm)
  sr         tests/test_temporal_sr_checkpoint.py::test_golden_official_sr_output_and_style_code
Results go to benchmarks/results/golden_spread.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "reference" / "golden"
RESULTS = REPO / "benchmarks" / "results"

# name -> (environment, threads). "native" is what plain `pytest` gets on the machine.
SETTINGS = {
    "native": ({}, 2),
    "native-1t": ({}, 1),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 2),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, 2),
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 2),
    "onednn-sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, 2),
    "all-avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 2),
    "all-avx2-1t": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1),
    "all-scalar": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, 2),
}
CASES = ("mp_full", "mp_warp", "mp_import", "fomm", "sr")


def _maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------- cases
def case_metaportrait(which: set) -> dict:
    import torch

    from mp_lightning.checkpoints.metaportrait import load_official_generator

    g, _, _ = load_official_generator(GOLDEN / "metaportrait" / "base_ckpt.pth.tar")
    io = torch.load(GOLDEN / "metaportrait" / "base_io.pt", map_location="cpu", weights_only=True)
    i, res = io["inputs"], {}
    with torch.no_grad():
        w = g.warp(i["source"], i["source_line"], i["driving_line"])
        if "mp_full" in which:
            raw = g.refine(i["source"], w, i["source_id"], i["source_line"], i["driving_line"], i["gaze_points"],
                           i["mouth_mask"])
            out = dict(w, prediction=raw)
            r = {k: _maxdiff(out[k], io["outputs"][k])
                 for k in ("prediction", "deformed", "occlusion_map", "deformation", "flow")}
            r["ladder_code"] = _maxdiff(w["ladder_code"], io["intermediates"]["ladder_code"])
            res["mp_full"] = r
    if "mp_warp" in which:
        wo = torch.load(GOLDEN / "metaportrait" / "base_warp_only_io.pt", map_location="cpu", weights_only=True)
        r = {k: _maxdiff(w[k], wo["outputs"][k]) for k in ("deformed", "occlusion_map", "deformation", "flow")}
        r["prediction(deformed)"] = _maxdiff(w["deformed"], wo["outputs"]["prediction"])
        res["mp_warp"] = r
    return res


def case_metaportrait_quirks() -> dict:
    """Size of the errors real convention bugs cause on the same data (what the tolerances must still catch).

    Each row switches one official convention of the base generator off and reports max and mean
    |ours - golden| of the compared outputs.
    """
    import torch

    import mp_lightning.networks.metaportrait as mp
    from mp_lightning.checkpoints.metaportrait import load_official_generator

    g, _, _ = load_official_generator(GOLDEN / "metaportrait" / "base_ckpt.pth.tar")
    io = torch.load(GOLDEN / "metaportrait" / "base_io.pt", map_location="cpu", weights_only=True)
    i = io["inputs"]
    official = dict(mp.GRID_SAMPLE_OPTIONS)
    bugs = {
        "grid_sample padding zeros": lambda on: mp.GRID_SAMPLE_OPTIONS.update(
            padding_mode="zeros" if on else official["padding_mode"]),
        "grid_sample align_corners=True": lambda on: mp.GRID_SAMPLE_OPTIONS.update(
            align_corners=True if on else official["align_corners"]),
        "line maps resized from full size": lambda on: setattr(g.config, "progressive_line_resize", not on),
        "identity embedding ignored (zeros)": None,
        "source/driving line maps swapped": None,
    }
    res = {}
    for name, switch in bugs.items():
        ident = torch.zeros_like(i["source_id"]) if name.startswith("identity") else i["source_id"]
        lines = (i["driving_line"], i["source_line"]) if "swapped" in name else (i["source_line"], i["driving_line"])
        if switch:
            switch(True)
        try:
            with torch.no_grad():
                w = g.warp(i["source"], *lines)
                raw = g.refine(i["source"], w, ident, i["source_line"], i["driving_line"], i["gaze_points"],
                               i["mouth_mask"])
        finally:
            if switch:
                switch(False)
        out = dict(w, prediction=raw)
        for k in ("prediction", "deformed", "occlusion_map", "deformation"):
            d = (out[k] - io["outputs"][k]).abs()
            res.setdefault(name, {})[k] = {"max": d.max().item(), "mean": d.mean().item()}
    return res


def case_metaportrait_import() -> dict:
    import torch

    from mp_lightning import load_stage
    from mp_lightning.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "official.ckpt"
        assert main(["import-checkpoint", "metaportrait", str(GOLDEN / "metaportrait" / "base_ckpt.pth.tar"),
                     "--out", str(path)]) == 0
        stage = load_stage(path)
    io = torch.load(GOLDEN / "metaportrait" / "base_io.pt", map_location="cpu", weights_only=True)
    i, ref = io["inputs"], io["outputs"]
    batch = {"source": i["source"], "source_landmarks": i["source_ldmk_669"],
             "driving_landmarks": i["driving_ldmk_669"], "source_identity": i["source_id"]}
    with torch.no_grad():
        got = stage(batch)
    r = {"prediction_raw": _maxdiff(got["prediction_raw"], ref["prediction"]),
         "prediction": _maxdiff(got["prediction"], ref["prediction"].clamp(0, 1))}
    r.update({k: _maxdiff(got[k], ref[k]) for k in ("deformed", "occlusion_map", "deformation")})
    return r


def case_fomm() -> dict:
    import copy

    import torch

    from mp_lightning.checkpoints.fomm import load_official_fomm
    from mp_lightning.networks.fomm_motion import normalize_kp

    gold = torch.load(GOLDEN / "fomm_vox256_golden_io.pt", map_location="cpu", weights_only=True)
    kp, gen, _, _ = load_official_fomm(GOLDEN / "fomm_vox256_golden_ckpt.pth.tar", align_corners=False)
    x, r = gold["inputs"], {}
    with torch.no_grad():
        for name in ("source", "driving", "driving_initial"):
            k = kp(x[name])
            r[f"kp_{name}.value"] = _maxdiff(k["value"], gold[f"kp_{name}"]["value"])
            r[f"kp_{name}.jacobian"] = _maxdiff(k["jacobian"], gold[f"kp_{name}"]["jacobian"])
        out = gen(x["source"], kp_driving=gold["kp_driving"], kp_source=gold["kp_source"])
        for key in ("prediction", "deformed", "occlusion_map", "mask", "sparse_deformed"):
            r[f"generator.{key}"] = _maxdiff(out[key], gold["generator_out"][key])
        r["deformation"] = _maxdiff(out["deformation"], gold["dense_motion_out"]["deformation"])
        kn = normalize_kp(gold["kp_source"], gold["kp_driving"], gold["kp_driving_initial"],
                          adapt_movement_scale=True, use_relative_movement=True, use_relative_jacobian=True)
        r["relative.kp_norm.value"] = _maxdiff(kn["value"], gold["relative"]["kp_norm"]["value"])
        r["relative.kp_norm.jacobian"] = _maxdiff(kn["jacobian"], gold["relative"]["kp_norm"]["jacobian"])
        pred = gen(x["source"], kp_driving=kn, kp_source=gold["kp_source"])["prediction"]
        r["relative.prediction"] = _maxdiff(pred, gold["relative"]["prediction"])
        kpt, gent = copy.deepcopy(kp).train(), copy.deepcopy(gen).train()
        ref = gold["train_mode"]
        kb = kpt(torch.cat([x["source"], x["driving"]]))
        out = gent(x["source"], kp_driving=gold["kp_driving"], kp_source=gold["kp_source"])
        r["train.kp.value"] = _maxdiff(kb["value"], ref["kp_batch_source_driving"]["value"])
        r["train.kp.jacobian"] = _maxdiff(kb["jacobian"], ref["kp_batch_source_driving"]["jacobian"])
        r["train.prediction"] = _maxdiff(out["prediction"], ref["prediction"])
        r["train.occlusion_map"] = _maxdiff(out["occlusion_map"], ref["occlusion_map"])
    return r


def case_sr() -> dict:
    import torch

    from mp_lightning.checkpoints.metaportrait_sr import load_official_sr

    net, _ = load_official_sr(GOLDEN / "metaportrait" / "sr_ckpt.pth")
    io = torch.load(GOLDEN / "metaportrait" / "sr_io.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        out = net(io["inputs"]["lq"], return_intermediates=True)
    return {"output": _maxdiff(out["output"], io["outputs"]["output"]),
            "style_code": _maxdiff(out["style_code"].flatten(0, 1), io["intermediates"]["style_code"])}


def worker(cases: list[str], threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    res = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "diffs": {}, "seconds": {}}
    mp = {c for c in cases if c in ("mp_full", "mp_warp")}
    # every job returns {case: {tensor: max abs diff}}; mp_full and mp_warp share one generator and warp pass
    jobs = [("+".join(sorted(mp)), lambda: case_metaportrait(mp))] if mp else []
    jobs += [(c, lambda fn=fn, c=c: {c: fn()}) for c, fn in
             (("mp_import", case_metaportrait_import), ("fomm", case_fomm), ("sr", case_sr)) if c in cases]
    for name, fn in jobs:
        start = time.time()
        res["diffs"].update(fn())
        res["seconds"][name] = round(time.time() - start, 1)
    return res


# ------------------------------------------------------------------------------------------- driver
def _round_up(x: float) -> float:
    """x rounded up to one significant digit (2.24e-4 -> 3e-4); 0 stays 0."""
    if x <= 0:
        return 0.0
    import math

    scale = 10 ** math.floor(math.log10(x))
    return math.ceil(round(x / scale, 6)) * scale
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", default=str(RESULTS / "golden_spread.json"))
    parser.add_argument("--quirks", action="store_true",
                        help="also measure (native kernels) how far real MetaPortrait convention bugs move the outputs")
    parser.add_argument("--safety", type=float, default=2.0, help="suggested tolerance = safety x max over settings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.worker:
        sys.path.insert(0, str(REPO))
        if cases == ["mp_quirks"]:
            print("RESULT " + json.dumps({"quirks": case_metaportrait_quirks()}))
        else:
            print("RESULT " + json.dumps(worker(cases, args.threads)))
        return
    unknown = set(cases) - set(CASES) | set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown cases/settings: {sorted(unknown)}")
    runs = {}
    for name in args.settings.split(","):
        env_extra, threads = SETTINGS[name]
        env = {k: v for k, v in os.environ.items()
               if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
        env.update(env_extra, PYTHONPATH=str(REPO))
        start = time.time()
        proc = subprocess.run([sys.executable, __file__, "--worker", "--cases", ",".join(cases),
                               "--threads", str(threads)], env=env, capture_output=True, text=True, cwd=REPO)
        line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"setting {name} failed:\n{proc.stderr[-3000:]}")
        runs[name] = dict(json.loads(line[0][7:]), env=env_extra)
        print(f"{name:13s} {time.time() - start:6.1f} s  ({runs[name]['capability']}, "
              f"{runs[name]['threads']} threads)", flush=True)
    names = list(runs)
    keys = [(case, key) for case, d in runs[names[0]]["diffs"].items() for key in d]
    spread = {case: {} for case, _ in keys}
    suggested = {case: {} for case, _ in keys}
    width = max(len(f"{c}.{k}") for c, k in keys)
    print(f"\nmax |ours - golden| per setting; suggested tolerance = {args.safety:g} x max, rounded up to one digit"
          f"\n{'':{width}s} " + " ".join(f"{n:>12s}" for n in names) + f" {'max':>9s} {'suggested':>9s}")
    for case, key in keys:
        vals = [runs[n]["diffs"][case][key] for n in names]
        spread[case][key] = max(vals)
        suggested[case][key] = _round_up(args.safety * max(vals))
        print(f"{case + '.' + key:{width}s} " + " ".join(f"{v:12.3g}" for v in vals)
              + f" {max(vals):9.3g} {suggested[case][key]:9.1g}")
    quirks = None
    if args.quirks:
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                                 "MKL_ENABLE_INSTRUCTIONS")}
        proc = subprocess.run([sys.executable, __file__, "--worker", "--cases", "mp_quirks"], cwd=REPO,
                              env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True)
        line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"quirks failed:\n{proc.stderr[-3000:]}")
        quirks = json.loads(line[0][7:])["quirks"]
        print("\nreal convention bugs, native kernels: max / mean |ours - golden| (MetaPortrait base, Full)")
        cols = ("prediction", "deformed", "occlusion_map", "deformation")
        print(f"{'':36s} " + " ".join(f"{c:>22s}" for c in cols))
        for name, d in quirks.items():
            print(f"{name:36s} " + " ".join(f"{d[c]['max']:10.3g} / {d[c]['mean']:9.3g}" for c in cols))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    out.write_text(json.dumps({"torch": torch.__version__, "cpu_capability_native": torch.backends.cpu.get_cpu_capability(),
                               "settings": {n: {"env": runs[n]["env"], "threads": runs[n]["threads"],
                                                "capability": runs[n]["capability"], "seconds": runs[n]["seconds"],
                                                "diffs": runs[n]["diffs"]} for n in names},
                               "max_over_settings": spread, "safety": args.safety,
                               "suggested_tolerance": suggested, "quirks": quirks}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
