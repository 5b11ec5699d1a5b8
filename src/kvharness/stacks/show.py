"""``kvharness cell --show``: what a cell would run, without running it.

Per cell: every process's argv exactly as it would be started (inside ``docker run`` for a container
runtime), the environment each one gets on top of the inherited one, the readiness steps, the metric
sources, the cold-start resets, and the engine YAML. Values of secret-looking variables (TOKEN, KEY,
SECRET, PASSWORD, ...) are redacted, and any secret value of the current environment is scrubbed from
the text.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import yaml

from kvharness.provenance import redact_env, scrub


def describe_cell(spec: dict) -> str:
    from kvharness.stacks.names import template_names
    from kvharness.stacks.launcher import plan_launch
    from kvharness.stacks.sizing import check_host_tier

    tier2_dir = Path(spec["tier2_root"]).resolve() / spec["hyp"] / spec["cell"]
    lines = [f"# cell {spec['hyp']}/{spec['cell']}  stack {spec['stack']['name']} (role {spec['role']}, "
             f"kind {spec['stack']['kind']}), profile {spec['profile']}"]
    try:
        check_host_tier(spec)
    except ValueError as exc:
        lines.append(f"# REFUSED: {exc}")
    with tempfile.TemporaryDirectory(prefix="kvharness-show-") as tmp:
        plan = plan_launch(spec["stack"], template_names(spec, tier2_dir), Path(tmp), check_ports=False)
        rt = plan.runtime
        lines.append(f"runtime: {rt['kind']}" + (f" image {rt['image']}" if rt.get("image") else "")
                     + (f" python {rt['python']}" if rt.get("python") else ""))
        common = redact_env(plan.env)
        for i, argv in enumerate(plan.argvs):
            own = redact_env(plan.argv_envs[i] if i < len(plan.argv_envs) else {})
            role = "main" if i == len(plan.argvs) - 1 else f"pre_commands[{i}]"
            lines.append(f"[{role}]")
            env = {**common, **own}
            if env:
                lines.append("  env: " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(env.items())))
            lines.append("  argv: " + shlex.join(str(a) for a in argv))
        if plan.containers:
            lines.append("teardown: " + "; ".join(f"docker stop {c}" for c in reversed(plan.containers)))
        ready = [f"GET {plan.health_url} -> 200"] if plan.health_url else []
        if plan.models_url and plan.served_model_name:
            ready.append(f"GET {plan.models_url} lists {plan.served_model_name!r}")
        ready += [f"GET {u} -> 200 ({k})" for k, u in plan.ready_urls.items()]
        lines.append("ready when: " + ("; ".join(ready) or "immediately"))
        lines.append("metrics: " + (", ".join(f"{k}={u}" for k, u in plan.metrics_urls.items()) or "none"))
        cold = spec["stack"].get("cold_start") or {}
        resets = [f"{r.get('method', 'POST')} {r['path']}" for r in cold.get("reset") or []]
        lines.append(f"cold start: wipe {tier2_dir}" + (f"; {', '.join(resets)}" if resets else "")
                     + ("; drop page cache" if cold.get("drop_page_cache") else ""))
        if plan.engine_yaml_path is not None:
            lines.append(f"engine YAML ({plan.engine_yaml_path.name}):")
            lines += ["  " + ln for ln in yaml.safe_dump(plan.engine_settings, sort_keys=False).splitlines()]
    return scrub("\n".join(lines))
