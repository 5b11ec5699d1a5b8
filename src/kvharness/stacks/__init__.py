"""Launch, health-check and tear down serving stacks (simulated or real) with their tier settings."""

from kvharness.stacks.launcher import (  # noqa: F401
    LaunchPlan,
    RunningStack,
    StackLaunchError,
    child_popen_kwargs,
    plan_launch,
    terminate_group,
)
