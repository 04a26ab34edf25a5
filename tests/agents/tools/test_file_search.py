"""The `file_search` tool with the official client against the real app (tiny random Llama, the
packaged MiniLM): files → vector store → a forced file_search call in a Response and in an
Assistants run → the hits in the model's context, a `file_search_call` item, `file_citation`s."""
from __future__ import annotations

import warnings

import openai
import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.retrieval.config import RetrievalConfig
from tests.agents.conftest import ANSWER
from tests.services.conftest import running_server, tiny_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DOCS = {"tides.txt": ("Tides are the rise and fall of sea levels, caused by the gravitational pull of the Moon "
                      "and the Sun on the oceans.", {"topic": "ocean"}),
        "sourdough.txt": ("Sourdough bread rises because a starter of wild yeast and lactic acid bacteria "
                          "ferments the dough.", {"topic": "baking"})}
DONE = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER}}  # a closed answer: status completed
OCEAN = {"type": "eq", "key": "topic", "value": "ocean"}


@pytest.fixture(scope="module")
def server(tiny_llama_path, tmp_path_factory):
    settings = tiny_settings(tiny_llama_path, agents=AgentsConfig(data_dir=str(tmp_path_factory.mktemp("fs"))),
                             retrieval=RetrievalConfig())
    with running_server(settings) as s:
        yield s


@pytest.fixture(scope="module")
def files(client):
    """{filename: file id}, and two vector stores: every file, and the tides file alone."""
    ids = {name: client.files.create(file=(name, text.encode()), purpose="assistants").id
           for name, (text, _) in DOCS.items()}
    both, tides = client.vector_stores.create(name="both"), client.vector_stores.create(name="tides")
    for name, (_, attributes) in DOCS.items():
        assert client.vector_stores.files.create_and_poll(file_id=ids[name], vector_store_id=both.id,
                                                          attributes=attributes, poll_interval_ms=50).status == "completed"
    assert client.vector_stores.files.create_and_poll(file_id=ids["tides.txt"], vector_store_id=tides.id,
                                                      poll_interval_ms=50).status == "completed"
    return ids, both.id, tides.id


def test_forced_file_search_in_a_response_cites_the_file_it_found(client, files, prompts):
    ids, both, _ = files
    r = client.responses.create(model="tiny", input="What causes the tides?", tool_choice={"type": "file_search"},
                                tools=[{"type": "file_search", "vector_store_ids": [both], "max_num_results": 3,
                                        "filters": OCEAN}],
                                include=["file_search_call.results"], text=DONE, max_output_tokens=400)
    assert r.status == "completed", r.error
    assert [o.type for o in r.output] == ["file_search_call", "message"]
    call, message = r.output
    assert call.id.startswith("fs_") and call.status == "completed" and len(call.queries) == 1 and call.queries[0]
    # the filter leaves only the ocean file, whatever the random model asked
    assert call.results and {(h.file_id, h.filename) for h in call.results} == {(ids["tides.txt"], "tides.txt")}
    assert "gravitational pull" in call.results[0].text and call.results[0].attributes == {"topic": "ocean"}
    [citation] = message.content[0].annotations
    assert (citation.type, citation.file_id, citation.filename) == ("file_citation", ids["tides.txt"], "tides.txt")
    assert citation.index == len(message.content[0].text)
    # the second turn read the hit: the call and the chunk are in its prompt
    assert '"name": "file_search"' in prompts[-1] and "gravitational pull of the Moon" in prompts[-1]
    assert client.responses.retrieve(r.id).output[0].results[0].file_id == ids["tides.txt"]


def test_streamed_file_search_events_and_results_only_when_included(client, files):
    ids, both, _ = files
    events = list(client.responses.create(
        model="tiny", input="How does bread rise?", tool_choice="required", stream=True, max_output_tokens=400,
        parallel_tool_calls=False,
        tools=[{"type": "file_search", "vector_store_ids": [both], "max_num_results": 1}], text=DONE))
    kinds = [e.type for e in events]
    start = kinds.index("response.file_search_call.in_progress")
    assert kinds[start - 1] == "response.output_item.added" and events[start - 1].item.type == "file_search_call"
    assert kinds[start:start + 3] == ["response.file_search_call.in_progress", "response.file_search_call.searching",
                                      "response.file_search_call.completed"]
    assert kinds[start + 3] == "response.output_item.done" and events[start + 3].item.results is None
    final = events[-1].response
    assert final.status == "completed" and final.output[0].results is None  # not included
    assert kinds.count("response.output_text.annotation.added") == 1, [e.type for e in events if "delta" not in e.type]
    citation = final.output[1].content[0].annotations[0]
    assert citation.file_id in ids.values() and len(final.output[1].content[0].annotations) == 1  # max_num_results
    assert client.responses.retrieve(final.id).output[0].results is None


def test_bad_file_search_tools_are_4xx(client, files):
    def create(**tool):
        return client.responses.create(model="tiny", input="x", tools=[{"type": "file_search", **tool}])

    with pytest.raises(openai.NotFoundError, match="vs_nope"):
        create(vector_store_ids=["vs_nope"])
    with pytest.raises(openai.BadRequestError, match="filters") as err:
        create(vector_store_ids=[files[1]], filters={"type": "eq", "key": "topic"})
    assert err.value.body["param"] == "tools.filters"
    with pytest.raises(openai.BadRequestError, match="max_num_results"):
        create(vector_store_ids=[files[1]], max_num_results=500)


def test_assistants_run_searches_the_assistants_vector_store(client, files):
    ids, _, tides = files
    beta = client.beta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assistant = beta.assistants.create(
            model="tiny", instructions="Answer from the files.", tools=[{"type": "file_search"}],
            tool_resources={"file_search": {"vector_store_ids": [tides]}},
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}})
    thread = beta.threads.create(messages=[{"role": "user", "content": "Why is the sea level changing?"}])
    run = beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50,
                                            tool_choice={"type": "file_search"}, max_completion_tokens=400)
    assert run.status == "completed", run.last_error
    steps = beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    [call] = steps[0].step_details.tool_calls
    assert call.type == "file_search" and call.file_search.results
    assert {r.file_id for r in call.file_search.results} == {ids["tides.txt"]}
    assert "gravitational" in call.file_search.results[0].content[0].text
    message = beta.threads.messages.retrieve(steps[1].step_details.message_creation.message_id, thread_id=thread.id)
    text = message.content[0].text
    [citation] = text.annotations
    assert citation.type == "file_citation" and citation.file_citation.file_id == ids["tides.txt"]
    assert text.value[citation.start_index:citation.end_index] == citation.text == "【0†tides.txt】"

    thread = beta.threads.create(messages=[{"role": "user", "content": "Tell me about the Moon."}])
    with beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=400,
                                  tool_choice={"type": "file_search"}) as stream:
        streamed = "".join(stream.text_deltas)
        final = stream.get_final_messages()[-1].content[0].text
    assert streamed == final.value and final.value.endswith("【0†tides.txt】")  # the marker is streamed too
