"""/v1/conversations with the official client: items CRUD, and a conversation that three responses
read as context and append to."""
from __future__ import annotations

import openai
import pytest


def test_conversation_appended_by_three_responses(client, prompts):
    conv = client.conversations.create(items=[{"type": "message", "role": "system", "content": "Answer briefly."}],
                                       metadata={"user": "ada"})
    assert conv.object == "conversation" and conv.metadata == {"user": "ada"}
    outputs = []
    for question in ("first question", "second question", "third question"):
        r = client.responses.create(model="tiny", input=question, conversation=conv.id, max_output_tokens=4,
                                    temperature=0)
        assert r.conversation.id == conv.id
        outputs.append(r.output_text)
    items = client.conversations.items.list(conv.id, order="asc", limit=100).data
    texts = [(i.role, i.content[0].text) for i in items]
    assert texts == [("system", "Answer briefly."),
                     ("user", "first question"), ("assistant", outputs[0]),
                     ("user", "second question"), ("assistant", outputs[1]),
                     ("user", "third question"), ("assistant", outputs[2])]
    # the third response read everything before it, in order
    seen = prompts[-1]
    assert seen.index("Answer briefly.") < seen.index("first question") < seen.index(outputs[1]) \
        < seen.index("third question")
    # paging in both directions
    page = client.conversations.items.list(conv.id, limit=3)
    assert [i.id for i in page.data] == [i.id for i in items[::-1][:3]] and page.has_more
    after = client.conversations.items.list(conv.id, limit=3, after=page.data[-1].id)
    assert [i.id for i in after.data] == [i.id for i in items[::-1][3:6]]


def test_conversation_and_item_routes(client):
    conv = client.conversations.create()
    assert client.conversations.retrieve(conv.id).id == conv.id
    assert client.conversations.update(conv.id, metadata={"topic": "tea"}).metadata == {"topic": "tea"}
    added = client.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        {"type": "message", "role": "assistant", "content": "hi there"}])
    assert [i.type for i in added.data] == ["message", "message"]
    one = client.conversations.items.retrieve(added.data[1].id, conversation_id=conv.id)
    assert one.content[0].text == "hi there" and one.content[0].type == "output_text"
    after_delete = client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
    assert after_delete.id == conv.id
    assert [i.id for i in client.conversations.items.list(conv.id).data] == [added.data[1].id]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.conversations.items.create(conv.id, items=[{"type": "message", "role": "robot", "content": "x"}])
    assert e.value.body["param"] == "items[0].role"
    with pytest.raises(openai.BadRequestError) as e:  # a conversation and a chain at once
        client.responses.create(model="tiny", input="x", conversation=conv.id, previous_response_id="resp_x")
    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    for call in (lambda: client.conversations.retrieve(conv.id),
                 lambda: client.conversations.items.list(conv.id),
                 lambda: client.responses.create(model="tiny", input="x", conversation=conv.id)):
        with pytest.raises(openai.NotFoundError, match=conv.id):
            call()
