"""A forced `code_interpreter` call from the real SmolLM2-135M, run in the real sandbox, end to end
through `client.responses.create` and `client.beta.threads.runs.create_and_poll`.

SmolLM2 is too small to write useful code from an instruction alone; one worked example in the
context (a call it made before, the way a client passes earlier output back) is enough for it to
write `print(12 * 34)`.
"""
from __future__ import annotations

import json
import warnings

import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.sandbox.config import SandboxConfig
from tests.services.conftest import running_server, tiny_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
EXAMPLE_CODE = "print(1 + 1)"
CALL_TEXT = '<tool_call>\n{"name": "code_interpreter", "arguments": %s}\n</tool_call>' % json.dumps(
    {"code": EXAMPLE_CODE})


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    settings = tiny_settings(smollm2_path, agents=AgentsConfig(data_dir=str(tmp_path_factory.mktemp("ci"))),
                             sandbox=SandboxConfig(), engine={"max_model_len": 2048})
    with running_server(settings) as s:
        yield s


def test_forced_code_interpreter_call_runs_in_a_response(client):
    example = [{"role": "user", "content": "Print 1 + 1."},
               {"type": "code_interpreter_call", "id": "ci_example", "status": "completed", "code": EXAMPLE_CODE,
                "container_id": None, "outputs": [{"type": "logs", "logs": "2\n"}]},
               {"role": "assistant", "content": "1 + 1 = 2."}]
    r = client.responses.create(model="tiny", input=example + [{"role": "user", "content": "Print 12 * 34."}],
                                tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
                                tool_choice={"type": "code_interpreter"}, max_tool_calls=1, max_output_tokens=80,
                                temperature=0)
    assert r.status in ("completed", "incomplete"), r.error
    call = r.output[0]
    assert call.type == "code_interpreter_call" and call.status == "completed", call
    assert "12" in call.code and "34" in call.code and call.container_id.startswith("cntr_")
    assert [(o.type, o.logs) for o in call.outputs] == [("logs", "408\n")]  # run by the sandbox, not the model
    assert r.output[1].type == "message"
    assert client.containers.retrieve(call.container_id).status == "running"  # the call's container lives on


def test_forced_code_interpreter_call_runs_in_an_assistants_run(client):
    beta = client.beta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assistant = beta.assistants.create(model="tiny", tools=[{"type": "code_interpreter"}])
    thread = beta.threads.create(messages=[
        {"role": "user", "content": "Print 1 + 1."}, {"role": "assistant", "content": CALL_TEXT},
        {"role": "user", "content": "<tool_response>\n2\n</tool_response>"},
        {"role": "assistant", "content": "1 + 1 = 2."}, {"role": "user", "content": "Print 12 * 34."}])
    run = beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=100,
                                            tool_choice={"type": "code_interpreter"}, max_completion_tokens=80,
                                            temperature=0)
    assert run.status in ("completed", "incomplete"), run.last_error
    steps = beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id, order="asc").data
    assert steps[0].type == "tool_calls" and steps[0].status == "completed"
    ci = steps[0].step_details.tool_calls[0]
    assert ci.type == "code_interpreter" and "12" in ci.code_interpreter.input and "34" in ci.code_interpreter.input
    assert [(o.type, o.logs) for o in ci.code_interpreter.outputs] == [("logs", "408\n")]
    if run.status == "completed":  # the model went on to answer after reading the output
        assert steps[-1].type == "message_creation"


def test_health_reports_the_sandbox_limits_in_force(server):
    with server.http() as http:
        sandbox = http.get("/health").json()["sandbox"]
    assert set(sandbox["layers"]) >= {"namespaces", "seccomp"}
    limits = sandbox["limits"]
    assert limits["oom_score_adj"]["sandbox"] == 1000 and limits["oom_score_adj"]["server"] < 1000
    assert limits["per_process"]["memory_mb"] == SandboxConfig().memory_mb
    assert limits["cgroup"] is None and limits["cgroup_note"] or limits["cgroup"]["memory_mb"] == SandboxConfig().memory_mb
