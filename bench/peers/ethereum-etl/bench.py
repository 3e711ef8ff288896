#!/usr/bin/env python3
"""ethereum-etl extract_token_transfers against model-runner on the same ethereum-etl export.

Called by run.sh (which makes the ethereum-etl virtual environment and finds model-runner):

    bench.py --etl-bin VENV/bin/ethereumetl [--runner-bin PATH] --data DIR --workdir W [--repeat 3]

For each tool, --repeat times, an empty output directory (the previous repetition's output
deleted first, as a benchmark's prepare step `rm -rf out` does, so that no repetition pays for
the page cache of the ones before it), and the wall time from process start to process exit (output written and closed; model-runner also fsyncs it) with the child's peak RSS:
- ethereum-etl 2.4.2: `ethereumetl extract_token_transfers --logs DIR/logs.json
  --output OUT/token_transfers.csv -w 1 -b 1000` (one worker and 1,000-item batches: its fastest);
- model-runner: `model-runner --store sqlite://OUT/runs.db --queue memory:// --sink file://OUT
  --chain ethereum=file://DIR --env dev all --backfill ethereum:erc20_transfers:START-END
  --chunk-size C`: the whole pipeline in one process (store, queue, worker), reading DIR's
  logs.json and blocks.json, writing OUT/dev-ethereum-sink.jsonl.
The best (shortest) repetition of each is reported; the outputs of the last repetitions are
diffed with compare.py.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def timed(cmd, cwd, log_path, env=None):
    """(seconds, peak RSS MiB) of one process, from its start to its exit."""
    with open(log_path, "w") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit("error: %s exited with %d; the end of its output:\n%s" % (cmd[0], proc.returncode, tail))
    return seconds, usage.ru_maxrss / 1024


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etl-bin", required=True)
    p.add_argument("--runner-bin", default=None)
    p.add_argument("--data", required=True, help="the generated export (logs.json, blocks.json, generated.txt)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=100, help="model-runner blocks per run")
    a = p.parse_args()

    gen = dict(line.strip().split("=", 1) for line in open(os.path.join(a.data, "generated.txt")) if "=" in line)
    logs, start, end = int(gen["logs"]), int(gen["start_block"]), int(gen["end_block"])
    logs_json = os.path.join(a.data, "logs.json")
    print("data: %s logs in blocks %d-%d (%s ERC-20, %s ERC-721, %s other-layout Transfer logs), %.0f MB"
          % (logs, start, end, gen.get("erc20_transfer"), gen.get("erc721_transfer"),
             gen.get("transfer_other_layout"), os.path.getsize(logs_json) / 1e6))

    results = []

    etl_runs = []
    for i in range(a.repeat):
        out = os.path.join(a.workdir, "etl")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        before = load()
        s, rss = timed([a.etl_bin, "extract_token_transfers", "--logs", logs_json,
                        "--output", os.path.join(out, "token_transfers.csv"), "-w", "1", "-b", "1000"],
                       out, os.path.join(out, "etl.log"))
        etl_runs.append((s, rss, before, load(), out))
        print("  ethereum-etl run %d: %.2f s, %.0f logs/s, peak RSS %.0f MiB (load %s)"
              % (i + 1, s, logs / s, rss, before), flush=True)
    etl_csv = os.path.join(etl_runs[-1][4], "token_transfers.csv")
    results.append(("ethereum-etl 2.4.2 extract_token_transfers -w 1 -b 1000", etl_runs,
                    count_lines(etl_csv) - 1))

    diff_line = None
    if a.runner_bin:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER_")}
        env.setdefault("RUST_LOG", "warn")
        runner_runs = []
        for i in range(a.repeat):
            out = os.path.join(a.workdir, "runner")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            before = load()
            s, rss = timed([a.runner_bin, "--store", "sqlite://%s/runs.db" % out, "--queue", "memory://",
                            "--sink", "file://%s/sink" % out, "--chain", "ethereum=file://%s" % a.data,
                            "--env", "dev", "all", "--backfill",
                            "ethereum:erc20_transfers:%d-%d" % (start, end), "--chunk-size", str(a.chunk_size)],
                           out, os.path.join(out, "runner.log"), env)
            runner_runs.append((s, rss, before, load(), out))
            print("  model-runner run %d: %.2f s, %.0f logs/s, peak RSS %.0f MiB (load %s)"
                  % (i + 1, s, logs / s, rss, before), flush=True)
        sink = os.path.join(runner_runs[-1][4], "sink", "dev-ethereum-sink.jsonl")
        if not os.path.exists(sink):
            sys.exit("error: model-runner wrote no %s" % sink)
        results.append(("model-runner all (erc20_transfers, %d-block runs)" % a.chunk_size, runner_runs,
                        count_lines(sink)))
        cmp = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), "--logs", logs_json,
                              "--etl", etl_csv, "--runner", sink], capture_output=True, text=True)
        diff_line = cmp.stdout.strip()
        if cmp.stderr:
            print(cmp.stderr.rstrip(), file=sys.stderr)
        if cmp.returncode not in (0, 1):
            sys.exit("error: compare.py failed:\n" + cmp.stderr)
        diff = dict(kv.split("=") for kv in diff_line.split())
    else:
        print("  model-runner: skipped (no binary; set MODEL_RUNNER_BIN)")

    print()
    print("| tool | logs | seconds (best of %d) | logs/s | peak RSS MiB | rows | diff rows | load before (1/5/15 min) |"
          % a.repeat)
    print("|---|---|---|---|---|---|---|---|")
    for name, runs, rows in results:
        s, rss, before, _, _ = min(runs)
        if name.startswith("ethereum-etl"):
            d = "%s four-topic, %s other-layout excluded" % (diff["etl_four_topic_rows"], diff["etl_other_rows"]) \
                if diff_line else "-"
        else:
            d = diff["diff_rows"]
        print("| %s | %d | %.2f | %.0f | %.0f | %d | %s | %s |" % (name, logs, s, logs / s, rss, rows, d, before))
    if len(results) == 2:
        print()
        print("model-runner / ethereum-etl, best against best: %.1fx"
              % (min(results[0][1])[0] / min(results[1][1])[0]))
    if diff_line:
        print()
        print("compare.py: " + diff_line)
        if diff["diff_rows"] != "0":
            sys.exit("error: the outputs differ (%s rows)" % diff["diff_rows"])


if __name__ == "__main__":
    main()
