"""Stand-ins for the real stacks' executables, for tests on machines without a GPU.

Each records what it was started with (argv and the env that matters) as one JSON line in
``$KVH_STANDIN_LOG``, then becomes the simulator behind the routes the real program serves:

- ``trtllm-serve serve M --host --port --served_model_name --extra_llm_api_options Y``: sim mode A, device
  pool = the YAML's ``kv_cache_config.max_tokens``;
- ``vllm serve M --host --port --served-model-name --num-gpu-blocks-override N --block-size B``: sim mode A
  (answers ``/reset_prefix_cache``);
- ``python -m sglang.launch_server --host --port --served-model-name --max-total-tokens T --page-size P``:
  sim mode A (answers ``/flush_cache``);
- ``python -m dynamo.trtllm`` (the worker): writes its registration (model, KVBM env) into the file
  discovery store ``$DYN_FILE_KV`` and serves ``/health`` on ``$DYN_SYSTEM_PORT``: 503 for
  ``$KVH_STANDIN_WORKER_READY_S`` seconds, then 200;
- ``python -m dynamo.frontend --http-port P``: reads the worker's registration from ``$DYN_FILE_KV`` and
  becomes sim mode B with the worker's tiers; like the real frontend it answers ``/health`` 200 at once
  and lists the model only after ``$KVH_STANDIN_REGISTER_AFTER_S`` seconds;
- ``docker run --rm --name N ... IMAGE ARGV``: records N -> pid in ``$KVH_STANDIN_DOCKER_DIR`` and runs
  ARGV (``python3`` = this interpreter); ``docker stop -t T N`` SIGTERMs that process and waits for it.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import time
from pathlib import Path

RECORDED_ENV = ("DYN_", "SGLANG_", "VLLM_", "HF_", "KVH_")
KV_PER_TOKEN = 64 * 1024  # llama-3.1-8b fp8, the simulator's default profile


def record(tool: str, argv: list[str]) -> None:
    path = os.environ.get("KVH_STANDIN_LOG")
    if not path:
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(RECORDED_ENV)}
    with open(path, "a") as fh:
        fh.write(json.dumps({"tool": tool, "argv": argv, "env": env, "pid": os.getpid()}) + "\n")


def opt(argv: list[str], *names: str, default=None):
    for n in names:
        if n in argv:
            return argv[argv.index(n) + 1]
    return default


def become_sim(*args: str) -> None:
    argv = [sys.executable, "-m", "kvharness", "sim", "--speedup", "50", *args]
    os.execv(sys.executable, argv)


def trtllm_serve(argv: list[str]) -> None:
    import yaml

    record("trtllm-serve", argv)
    engine = yaml.safe_load(Path(opt(argv, "--extra_llm_api_options", "--config")).read_text())
    tokens = int(engine["kv_cache_config"]["max_tokens"])
    become_sim("--mode", "A", "--host", opt(argv, "--host"), "--port", opt(argv, "--port"),
               "--served-model-name", opt(argv, "--served_model_name", default=argv[1]),
               "--tier0-bytes", str(tokens * KV_PER_TOKEN),
               "--max-batch-size", str(engine["max_batch_size"]), "--max-num-tokens", str(engine["max_num_tokens"]))


def vllm(argv: list[str]) -> None:
    record("vllm", argv)
    blocks = int(opt(argv, "--num-gpu-blocks-override", default="4096"))
    bs = int(opt(argv, "--block-size", default="16"))
    become_sim("--mode", "A", "--host", opt(argv, "--host"), "--port", opt(argv, "--port"),
               "--served-model-name", opt(argv, "--served-model-name", default=argv[1]),
               "--tokens-per-block", str(bs), "--tier0-bytes", str(blocks * bs * KV_PER_TOKEN))


def sglang_server(argv: list[str]) -> None:
    record("sglang.launch_server", argv)
    assert "--enable-hierarchical-cache" in argv and float(opt(argv, "--hicache-ratio")) >= 1.0
    page = int(opt(argv, "--page-size", default="1"))
    become_sim("--mode", "A", "--host", opt(argv, "--host"), "--port", opt(argv, "--port"),
               "--served-model-name", opt(argv, "--served-model-name", default=opt(argv, "--model-path")),
               "--tokens-per-block", str(page),
               "--tier0-bytes", str(int(opt(argv, "--max-total-tokens")) * KV_PER_TOKEN))


def dynamo_worker(argv: list[str]) -> None:
    record("dynamo.trtllm", argv)
    store = Path(os.environ["DYN_FILE_KV"])
    store.mkdir(parents=True, exist_ok=True)
    reg = {"model": opt(argv, "--served-model-name"), "env": {k: v for k, v in os.environ.items() if k.startswith("DYN_KVBM_")},
           "kv_block_size": int(opt(argv, "--kv-block-size", default="32")), "pid": os.getpid(),
           "engine_yaml": opt(argv, "--extra-engine-args")}
    (store / "worker.json.tmp").write_text(json.dumps(reg))
    os.replace(store / "worker.json.tmp", store / "worker.json")
    t0 = time.monotonic()
    ready_after = float(os.environ.get("KVH_STANDIN_WORKER_READY_S", "0.5"))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"# no worker metrics in the stand-in\n")
                return
            ok = time.monotonic() - t0 > ready_after
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b'{"status":"ready"}' if ok else b'{"status":"notready"}')

        def log_message(self, *a):
            pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http.server.HTTPServer(("127.0.0.1", int(os.environ["DYN_SYSTEM_PORT"])), H).serve_forever()


def dynamo_frontend(argv: list[str]) -> None:
    record("dynamo.frontend", argv)
    assert os.environ.get("DYN_DISCOVERY_BACKEND") == "file", "stand-in frontend: file discovery expected"
    reg_path = Path(os.environ["DYN_FILE_KV"]) / "worker.json"
    deadline = time.monotonic() + 20
    while not reg_path.exists():
        if time.monotonic() > deadline:
            sys.exit("stand-in frontend: no worker registered in DYN_FILE_KV")
        time.sleep(0.05)
    import yaml

    reg = json.loads(reg_path.read_text())
    env = reg["env"]
    block = reg["kv_block_size"] * KV_PER_TOKEN
    engine = yaml.safe_load(Path(reg["engine_yaml"]).read_text())
    become_sim("--mode", "B", "--host", opt(argv, "--http-host", default="0.0.0.0"), "--port", opt(argv, "--http-port"),
               "--metrics-port", env["DYN_KVBM_METRICS_PORT"], "--served-model-name", reg["model"],
               "--tokens-per-block", str(reg["kv_block_size"]),
               "--tier0-bytes", str(int(engine["kv_cache_config"]["max_tokens"]) * KV_PER_TOKEN),
               "--max-batch-size", str(engine["max_batch_size"]), "--max-num-tokens", str(engine["max_num_tokens"]),
               "--tier1-bytes", str(int(env["DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS"]) * block),
               "--tier2-bytes", str(int(env["DYN_KVBM_DISK_CACHE_OVERRIDE_NUM_BLOCKS"]) * block),
               "--tier2-dir", env["DYN_KVBM_DISK_CACHE_DIR"], "--block-bytes-scale", "0.001",
               "--register-after-s", os.environ.get("KVH_STANDIN_REGISTER_AFTER_S", "1.0"))


def docker(argv: list[str]) -> None:
    record("docker", argv)
    state = Path(os.environ["KVH_STANDIN_DOCKER_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    if argv[0] == "run":
        i, name = 1, None
        flags_with_value = {"--name", "--gpus", "--ipc", "--network", "-v", "-e"}
        while argv[i].startswith("-"):
            if argv[i] == "--name":
                name = argv[i + 1]
            i += 2 if argv[i] in flags_with_value else 1
        image, inner = argv[i], argv[i + 1:]
        (state / f"{name}.pid").write_text(str(os.getpid()))
        (state / f"{name}.image").write_text(image)
        if inner[0] == "python3":
            inner = [sys.executable, *inner[1:]]
        os.execvp(inner[0], inner)
    if argv[0] == "stop":
        name = argv[-1]
        pid_file = state / f"{name}.pid"
        (state / f"{name}.stopped").write_text(" ".join(argv))
        if not pid_file.exists():
            sys.exit(f"Error response from daemon: No such container: {name}")
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + float(argv[argv.index("-t") + 1] if "-t" in argv else 10)
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        pid_file.unlink()
        print(name)
        return
    sys.exit(f"stand-in docker: unsupported command {argv[0]!r}")


def _alive(pid: int) -> bool:
    """Running, not a zombie (the harness reaps the docker client only after docker stop returns)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


TOOLS = {"trtllm-serve": trtllm_serve, "vllm": vllm, "docker": docker}


def install(bin_dir: Path) -> None:
    """Write the executables into ``bin_dir`` (put it first on PATH, and pylib/ on PYTHONPATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for tool in TOOLS:
        exe = bin_dir / tool
        exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(here)!r})\n"
                       f"from standin import main\nmain({tool!r})\n")
        exe.chmod(0o755)


def main(tool: str) -> None:
    TOOLS[tool](sys.argv[1:])
