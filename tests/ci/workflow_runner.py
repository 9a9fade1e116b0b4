"""Runs a GitHub workflow's jobs here, step by step, as the runner would: `run:` steps in bash with their env, the
`pulumi/actions` steps as the `pulumi` commands they stand for, expressions (`${{ secrets.X }}`, `steps.id.outputs`,
`needs.job.outputs`, `failure()`) evaluated, step outputs read from $GITHUB_OUTPUT.

`pulumi` is tests/infra/fake_pulumi.py in project mode: the CLI's own checks on the stack file (declared keys set,
secrets encrypted, the stack created) and the real program under mocks. Steps that install dependencies are skipped
(the test venv has them); actions other than pulumi/actions (checkout, setup-python) have nothing to do here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.infra.fake_pulumi import command_dir

ROOT = Path(__file__).resolve().parents[2]
# What a checkout of the repository holds that the deploy steps read.
PROJECT_FILES = ("__main__.py", "Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml")
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'[^']*')|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<call>[a-z]+\(\))|(?P<name>[A-Za-z_][\w.-]*))"
)


@dataclass
class StepResult:
    name: str
    ran: bool
    returncode: int = 0
    output: str = ""


@dataclass
class JobResult:
    name: str
    ran: bool
    ok: bool = True
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "\n".join(f"--- {s.name} (rc={s.returncode})\n{s.output}" for s in self.steps if s.ran)


class Runner:
    def __init__(
        self,
        tmp: Path,
        workflow: Mapping[str, Any],
        secrets_by_environment: Mapping[str, Mapping[str, str]],
        variables: Mapping[str, str] | None = None,
    ) -> None:
        self.workflow = workflow
        self.secrets_by_environment = secrets_by_environment
        self.variables = dict(variables or {})
        self.project = tmp / "checkout"
        self.project.mkdir()
        for name in PROJECT_FILES:
            shutil.copy2(ROOT / name, self.project / name)
        (self.project / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
        self.state = tmp / "pulumi-state"
        self.state.mkdir()
        self.temp = tmp / "runner-temp"
        self.temp.mkdir()
        bin_dir = command_dir(tmp)
        self.env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "HOME": str(tmp),
            "FAKE_PULUMI_STATE": str(self.state),
            "FAKE_PULUMI_PROJECT": str(self.project),
            "RUNNER_TEMP": str(self.temp),
            "LANG": "C.UTF-8",
        }
        self.results: dict[str, JobResult] = {}

    def fresh_checkout(self) -> None:
        """Each job starts from the repository's files: config a previous job set is gone, as on a new runner."""
        for name in PROJECT_FILES:
            shutil.copy2(ROOT / name, self.project / name)

    def run_job(
        self,
        name: str,
        *,
        matrix: Mapping[str, str] | None = None,
        skip_steps: tuple[str, ...] = (),
        github: Mapping[str, str] | None = None,
    ) -> JobResult:
        job = self.workflow["jobs"][name]
        needs = [job["needs"]] if isinstance(job.get("needs"), str) else list(job.get("needs") or [])
        context = {
            "needs": {
                n: {"outputs": self.results[n].outputs if n in self.results else {}, "result": self._result(n)}
                for n in needs
            },
            "matrix": dict(matrix or {}),
            "github": dict(github or {"event_name": "push"}),
            "vars": self.variables,
            "steps": {},
            "runner": {"temp": str(self.temp)},
        }
        failed_needs = any(context["needs"][n]["result"] == "failure" for n in needs)
        condition = job.get("if")
        if condition is None:
            run = all(context["needs"][n]["result"] == "success" for n in needs)
        else:
            run = bool(self.evaluate(str(condition), context, failed=failed_needs))
        if not run:
            self.results[name] = JobResult(name, ran=False)
            return self.results[name]
        environment = self.evaluate_text(str(job.get("environment", "")), context)
        context["secrets"] = {
            **self.secrets_by_environment.get("repository", {}),
            **self.secrets_by_environment.get(environment, {}),
        }
        self.fresh_checkout()
        result = JobResult(name, ran=True)
        failed = False
        for index, step in enumerate(job.get("steps") or []):
            label = step.get("name") or step.get("uses") or f"step {index}"
            if step.get("if") is not None:
                go = bool(self.evaluate(str(step["if"]), context, failed=failed))
            else:
                go = not failed
            if not go or label in skip_steps:
                result.steps.append(StepResult(label, ran=False))
                continue
            step_result, outputs = self._run_step(step, context, label)
            result.steps.append(step_result)
            if step.get("id"):
                context["steps"][step["id"]] = {
                    "outputs": outputs,
                    "outcome": "success" if step_result.returncode == 0 else "failure",
                }
            failed = failed or step_result.returncode != 0
        result.ok = not failed
        result.outputs = {k: self.evaluate_text(str(v), context) for k, v in (job.get("outputs") or {}).items()}
        self.results[name] = result
        return result

    def _result(self, name: str) -> str:
        r = self.results.get(name)
        return "skipped" if r is None or not r.ran else ("success" if r.ok else "failure")

    def _run_step(
        self, step: Mapping[str, Any], context: dict[str, Any], label: str
    ) -> tuple[StepResult, dict[str, str]]:
        env = {**self.env, **{k: self.evaluate_text(str(v), context) for k, v in (step.get("env") or {}).items()}}
        uses = str(step.get("uses", ""))
        if uses:
            with_ = {k: self.evaluate_text(str(v), context) for k, v in (step.get("with") or {}).items()}
            if not uses.startswith("pulumi/actions@") or "command" not in with_:
                return StepResult(label, ran=False), {}
            script = f'pulumi {with_["command"]} --yes --stack "{with_["stack-name"]}"'
        else:
            script = str(step["run"])
            if "pip install" in script:
                return StepResult(label, ran=False), {}  # the test venv has the dependencies
        output_file = self.temp / "github_output"
        output_file.write_text("")
        env["GITHUB_OUTPUT"] = str(output_file)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
        return StepResult(label, ran=True, returncode=done.returncode, output=done.stdout + done.stderr), outputs

    # -- expressions ----------------------------------------------------------------------------------------------

    def evaluate_text(self, text: str, context: Mapping[str, Any]) -> str:
        return _EXPRESSION.sub(lambda m: str(self.evaluate(m.group(1), context) or ""), text)

    def evaluate(self, expression: str, context: Mapping[str, Any], *, failed: bool = False) -> Any:
        """GitHub's expression language, as far as these workflows use it: names, 'strings', ==, !=, &&, ||, !,
        parentheses, and the status functions."""
        expression = _EXPRESSION.sub(lambda m: m.group(1), expression).strip()
        python: list[str] = []
        position = 0
        while position < len(expression):
            m = _TOKEN.match(expression, position)
            if not m or m.end() == position:
                raise ValueError(f"cannot read expression {expression!r} at {position}")
            position = m.end()
            if m.group("string") is not None:
                python.append(repr(m.group("string")[1:-1]))
            elif m.group("op"):
                python.append({"&&": " and ", "||": " or ", "!": " not "}.get(m.group("op"), m.group("op")))
            elif m.group("call"):
                status = {"failure()": failed, "success()": not failed, "always()": True, "cancelled()": False}
                python.append(repr(status[m.group("call")]))
            else:
                python.append(repr(_lookup(context, m.group("name"))))
        return eval("".join(python), {"__builtins__": {}}, {})


def _lookup(context: Mapping[str, Any], name: str) -> Any:
    node: Any = context
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ""
        node = node[part]
    return node
