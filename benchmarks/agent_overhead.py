"""Does the agent's measurement cost anything? Its reported p50 against a minimal tight loop of the same runtime.

For one model, same threads and run count, in separate fresh processes, alternated A/B/B/A over several rounds so
slow drift (thermal, other load) falls on both sides equally:

* agent  -- ``python farmbench/runners/agent.py bench --model M --threads T --runs N ...``; p50 of its latencies_ns
* tight  -- a dozen lines: load, allocate, set one input, warm up, then ``perf_counter_ns(); invoke();
            perf_counter_ns()`` N times (TFLite ``interpreter.invoke()``; ONNX Runtime
            ``session.run_with_iobinding(binding)``, the call the agent times). For ONNX Runtime a third column
            times plain ``session.run(None, feed)`` for reference (it also converts the input and output).

Prints per-round p50s and ratios, the median over rounds of each side, the median of the per-round (paired)
agent/tight ratios with a bootstrap 95% CI (goal: within +-2%), and the spread of the tight loop's own p50 from one
process to the next -- on a shared VM that spread, not the agent, is usually what limits the comparison.

Then, to isolate what the agent's loop code itself costs, one process loads the model once and alternates short
blocks (10 invokes) of the agent's ``run_loop`` and the tight loop on the same interpreter, a few hundred times, so
slow drift cancels; it prints the pooled-median ratio (``--no-loop-check`` skips it). Usage:

    python benchmarks/agent_overhead.py                          # builds MobileNetV2 a0.35 r96 (random weights)
    python benchmarks/agent_overhead.py --model m.tflite --threads 2 --runs 300 --rounds 5
    python benchmarks/agent_overhead.py --model m.onnx --cpus 1 --json overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "farmbench" / "runners" / "agent.py"

MAKE_INVOKE = textwrap.dedent('''
    def make_invoke(model, runtime, threads):
        """The runtime's one inference call, inputs set once (seeded), as the agent's timer sees it."""
        rng = np.random.default_rng(0)
        if runtime == "litert":
            from ai_edge_litert.interpreter import Interpreter
            interpreter = Interpreter(model_path=model, num_threads=threads)
            interpreter.allocate_tensors()
            inp = interpreter.get_input_details()[0]
            interpreter.set_tensor(inp["index"], rng.uniform(-1, 1, inp["shape"]).astype(inp["dtype"]))
            return interpreter.invoke
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        node = session.get_inputs()[0]
        data = rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in node.shape]).astype(np.float32)
        if runtime == "onnxruntime-run":
            feed = {node.name: data}
            return lambda: session.run(None, feed)
        binding = session.io_binding()
        binding.bind_cpu_input(node.name, data)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cpu")
        return lambda: session.run_with_iobinding(binding)
''')

TIGHT_LOOP = MAKE_INVOKE + textwrap.dedent('''
    import json, sys, time
    import numpy as np
    model, runtime = sys.argv[1], sys.argv[2]
    threads, warmup, runs = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    if sys.argv[6]:
        import os
        os.sched_setaffinity(0, [int(c) for c in sys.argv[6].split(",")])
    invoke = make_invoke(model, runtime, threads)
    for _ in range(1 + warmup):
        invoke()
    latencies = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        invoke()
        latencies.append(time.perf_counter_ns() - t0)
    print(json.dumps(latencies))
''')

BUILD = textwrap.dedent('''
    import sys
    import keras, numpy as np, tensorflow as tf, tf2onnx
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    open(sys.argv[1] + "/mobilenet_v2_a0.35_r96.tflite", "wb").write(tflite)
    tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec((1, 96, 96, 3), tf.float32, name="input")],
                               opset=17, output_path=sys.argv[1] + "/mobilenet_v2_a0.35_r96.onnx")
''')


def p50(latencies_ns: list[int]) -> float:
    return float(statistics.median(latencies_ns))


def bootstrap_median_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the median."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


LOOP_CHECK = MAKE_INVOKE + textwrap.dedent('''
    import importlib.util, json, statistics, sys, time
    import numpy as np
    spec = importlib.util.spec_from_file_location("agent", sys.argv[1])
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    model, runtime = sys.argv[2], sys.argv[3]
    threads, pairs, block = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    invoke = make_invoke(model, runtime, threads)
    for _ in range(50):
        invoke()
    agent_ns, tight_ns = [], []
    for _ in range(pairs):
        agent_ns += agent.run_loop(invoke, None, 1, block, 0, 10 ** 15)[0]
        for _ in range(block):
            t0 = time.perf_counter_ns()
            invoke()
            tight_ns.append(time.perf_counter_ns() - t0)
    print(json.dumps([statistics.median(agent_ns), statistics.median(tight_ns)]))
''')


def verdict(ci_low: float, ci_high: float) -> str:
    """Against the +-2% goal, judged on the CI rather than the point estimate alone."""
    if 0.98 <= ci_low and ci_high <= 1.02:
        return "yes"
    if ci_high < 0.98 or ci_low > 1.02:
        return "NO"
    return "undetermined (the CI is wider than the goal: too much noise on this machine; add --rounds)"


def loop_check(model: Path, runtime: str, threads: int, pairs: int = 300, block: int = 10) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", LOOP_CHECK, str(AGENT), str(model), runtime, str(threads),
                           str(pairs), str(block)], check=False, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise SystemExit(f"loop check failed:\n{proc.stderr[-3000:]}")
    agent_ns, tight_ns = json.loads(proc.stdout)
    return {"pairs": pairs, "block": block, "agent_p50_us": agent_ns / 1e3, "tight_p50_us": tight_ns / 1e3,
            "ratio": agent_ns / tight_ns}


def run_agent(model: Path, runtime: str, threads: int, warmup: int, runs: int, cpus: str) -> float:
    pin = ["--affinity", cpus] if cpus else []
    proc = subprocess.run([sys.executable, str(AGENT), "bench", "--model", str(model), "--runtime", runtime,
                           "--threads", str(threads), "--warmup-runs", str(warmup), "--runs", str(runs), *pin],
                          check=False, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    document = json.loads(proc.stdout)
    if document["status"] != "ok":
        raise SystemExit(f"agent failed: {document['error_class']}: {document['error_message']}")
    return p50(document["latencies_ns"])


def run_tight(model: Path, runtime: str, threads: int, warmup: int, runs: int, cpus: str) -> float:
    proc = subprocess.run([sys.executable, "-c", TIGHT_LOOP, str(model), runtime, str(threads), str(warmup),
                           str(runs), cpus], check=False, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise SystemExit(f"tight loop failed:\n{proc.stderr[-3000:]}")
    return p50(json.loads(proc.stdout))


def build_default(out_dir: Path) -> list[Path]:
    proc = subprocess.run([sys.executable, "-c", BUILD, str(out_dir)], check=False, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise SystemExit(f"building the default model failed:\n{proc.stderr[-3000:]}")
    return sorted(out_dir.glob("mobilenet_v2_a0.35_r96.*"))


def measure(model: Path, threads: int, warmup: int, runs: int, rounds: int, cpus: str,
            check_loop: bool) -> dict[str, Any]:
    runtime = "litert" if model.suffix == ".tflite" else "onnxruntime"
    agent_p50s: list[float] = []
    tight_p50s: list[float] = []
    plain_p50s: list[float] = []
    for round_index in range(rounds):
        # A B on even rounds, B A on odd ones: a drift within a round lands on both sides.
        order = ("agent", "tight") if round_index % 2 == 0 else ("tight", "agent")
        for side in order:
            if side == "agent":
                agent_p50s.append(run_agent(model, runtime, threads, warmup, runs, cpus))
            else:
                tight_p50s.append(run_tight(model, runtime, threads, warmup, runs, cpus))
        if runtime == "onnxruntime":
            plain_p50s.append(run_tight(model, "onnxruntime-run", threads, warmup, runs, cpus))
        extra = f"  session.run {plain_p50s[-1] / 1e3:9.1f} us" if plain_p50s else ""
        print(f"  round {round_index + 1}: agent p50 {agent_p50s[-1] / 1e3:9.1f} us   tight p50 "
              f"{tight_p50s[-1] / 1e3:9.1f} us   ratio {agent_p50s[-1] / tight_p50s[-1]:.4f}{extra}", flush=True)
    agent_median, tight_median = statistics.median(agent_p50s), statistics.median(tight_p50s)
    # The paired statistic: each round's agent and tight processes ran back to back, so their ratio cancels
    # whatever load the machine had then; the median over rounds drops a round that a burst hit on one side only.
    ratios = [a / t for a, t in zip(agent_p50s, tight_p50s)]
    ratio = statistics.median(ratios)
    ci_low, ci_high = bootstrap_median_ci(ratios)
    tight_spread = max(tight_p50s) / min(tight_p50s) - 1
    result = {"model": str(model), "runtime": runtime, "threads": threads, "runs": runs, "warmup_runs": warmup,
              "rounds": rounds, "cpus": cpus or None, "agent_p50_us": [v / 1e3 for v in agent_p50s],
              "tight_p50_us": [v / 1e3 for v in tight_p50s], "agent_median_p50_us": agent_median / 1e3,
              "tight_median_p50_us": tight_median / 1e3, "median_paired_ratio": ratio,
              "paired_ratio_ci95": [ci_low, ci_high], "ratio_of_medians": agent_median / tight_median,
              "within_2pct": abs(ratio - 1) <= 0.02, "verdict": verdict(ci_low, ci_high),
              "tight_p50_spread": tight_spread,
              "loadavg": list(os.getloadavg())}
    if plain_p50s:
        result["session_run_median_p50_us"] = statistics.median(plain_p50s) / 1e3
    print(f"{model.name} [{runtime}, {threads} thread(s), {runs} runs x {rounds} rounds, cpus {cpus or 'any'}]: "
          f"agent {agent_median / 1e3:.1f} us, tight {tight_median / 1e3:.1f} us, median paired ratio {ratio:.4f} "
          f"({(ratio - 1) * 100:+.2f}%, 95% CI {ci_low:.4f}-{ci_high:.4f}; goal within +-2%: "
          f"{result['verdict']}), ratio of medians {agent_median / tight_median:.4f}; "
          f"tight loop p50 spread across processes {tight_spread * 100:.1f}%, loadavg {os.getloadavg()[0]:.2f}",
          flush=True)
    if check_loop:
        result["loop_check"] = check = loop_check(model, runtime, threads)
        print(f"  loop code, one process, {check['pairs']} interleaved blocks of {check['block']}: agent run_loop "
              f"{check['agent_p50_us']:.1f} us, tight {check['tight_p50_us']:.1f} us, ratio {check['ratio']:.4f} "
              f"({(check['ratio'] - 1) * 100:+.2f}%)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help=".tflite or .onnx; repeat for several")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup-runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="A/B pairs (3-5 on a quiet board; more on a shared VM)")
    parser.add_argument("--cpus", default="", help="pin both sides to these CPUs (e.g. 1): fewer migrations")
    parser.add_argument("--no-loop-check", dest="check_loop", action="store_false")
    parser.add_argument("--json", dest="json_out", type=Path)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farmbench-overhead-") as tmp:
        models = ns.model or build_default(Path(tmp))
        results = [measure(m, ns.threads, ns.warmup_runs, ns.runs, ns.rounds, ns.cpus, ns.check_loop)
                   for m in models]
    if ns.json_out:
        ns.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
