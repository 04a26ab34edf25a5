"""The chat workloads of `livecast bench serving --workloads`, where speculative decoding matters.

- `quote`: answer from a given document by copying its sentences (prompt lookup drafts well);
- `edit`: rewrite a paragraph or code block with one small change (the reply repeats the input);
- `chat`: free chat, where drafts from the prompt rarely hold.

Every text here was written for this bench (no third-party text). Each workload is a list of chat
requests (OpenAI `messages`), sent greedy through /v1/chat/completions to livecast and to llama.cpp.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

DOCUMENTS = [
    "The Harbor Street library opens at eight in the morning on weekdays and at ten on Saturdays. It is "
    "closed on Sundays and on public holidays. Members may borrow up to twelve books at a time for three "
    "weeks, and a loan can be renewed twice online unless another member has reserved the book. Late "
    "returns cost twenty cents per book per day, capped at five dollars per book.",
    "To replace the filter, first switch the purifier off and unplug it. Open the back panel by pressing "
    "the two tabs at the bottom. Pull the old filter straight out and let the dust settle before you "
    "insert the new one with the arrow pointing towards the fan. Close the panel until it clicks, plug the "
    "purifier in and hold the reset button for three seconds to clear the filter light.",
    "The expedition left the coastal village on the fourth of March with six mules and nine porters. They "
    "followed the river for eleven days until the valley narrowed into a gorge. Heavy rain forced the group "
    "to wait two days at the abandoned mill, where the cook fell ill. On the fifteenth day they reached the "
    "pass, and the leader wrote that the glacier had retreated far beyond the old survey marks.",
    "Our refund policy is simple. Unused items can be returned within thirty days of delivery for a full "
    "refund. Opened items can be returned within fourteen days and are refunded minus a ten percent "
    "restocking fee. Gift cards and custom orders cannot be returned. Refunds are paid to the original "
    "payment method within five business days after the returned item arrives at our warehouse.",
    "The garden committee met on Tuesday evening. It agreed to move the compost bins to the north corner, "
    "away from the new benches. Water will be shared on a rota: odd-numbered plots on Mondays and "
    "Thursdays, even-numbered plots on Tuesdays and Fridays. The committee also voted to buy a second "
    "wheelbarrow and to hold the autumn harvest fair on the last Saturday of September.",
    "The service stores each uploaded file in three copies on separate disks. A background job checks every "
    "copy once a week and rebuilds any copy whose checksum no longer matches. Deleted files are kept for "
    "seven days in a hidden folder so that they can be restored, and are then erased from all three disks. "
    "Files larger than two gigabytes are split into parts of two hundred megabytes.",
    "The recipe makes four servings. Soak the beans overnight, then drain them and cook them in fresh water "
    "for forty minutes. Fry one chopped onion and two cloves of garlic in olive oil until soft, add the "
    "beans, a tin of tomatoes and a spoon of paprika, and simmer for twenty minutes. Season with salt at the "
    "end, because salt added early keeps the beans hard.",
    "Trains on the coastal line run every twenty minutes between six in the morning and midnight. After "
    "midnight a night bus follows the same route once an hour. Bicycles are allowed on trains outside the "
    "rush hours, which are seven to nine in the morning and five to seven in the evening. Tickets bought on "
    "the train cost two dollars more than tickets bought at the station.",
]
QUESTIONS = [
    "How long can members keep a book, and what happens if they return it late?",
    "What are the steps after the old filter is removed?",
    "What happened at the abandoned mill?",
    "What is the refund for an opened item?",
    "What did the committee decide about watering?",
    "What happens to deleted files?",
    "Why is the salt added at the end?",
    "When can I take my bicycle on the train?",
]

EDITS = [
    ("Rename the variable `x` to `count` everywhere in this function. Reply with the whole function.",
     "def tally(words):\n    x = 0\n    for word in words:\n        if word.strip():\n            x += 1\n"
     "    print('non-empty words:', x)\n    return x\n"),
    ("Fix the typo in line 3 of this code. Reply with the corrected code only.",
     "def average(values):\n    if not values:\n        retrun 0.0\n    total = sum(values)\n"
     "    return total / len(values)\n"),
    ("Change the default timeout from 30 to 60 seconds. Reply with the whole class.",
     "class Client:\n    def __init__(self, host, port, timeout=30):\n        self.host = host\n"
     "        self.port = port\n        self.timeout = timeout\n\n    def address(self):\n"
     "        return f'{self.host}:{self.port}'\n"),
    ("Add a docstring saying 'Return the largest item.' to this function. Reply with the whole function.",
     "def largest(items):\n    best = items[0]\n    for item in items[1:]:\n        if item > best:\n"
     "            best = item\n    return best\n"),
    ("Rewrite this paragraph, changing only 'Tuesday' to 'Wednesday'.",
     "The team meets every Tuesday at nine. Each person says what they finished, what they plan next, and "
     "what is blocking them. The meeting ends by half past nine, and longer discussions move to the "
     "afternoon."),
    ("Fix the spelling mistakes in this paragraph and change nothing else.",
     "The museum is open from ten to six. Visiters can leave their bags in the cloakroom, which is free. "
     "Photographs are alowed in every room except the gallery of old maps."),
    ("Rewrite this paragraph in the past tense, keeping every other word the same.",
     "The baker opens the shop at six. She lights the oven, mixes the dough and shapes the loaves. By seven "
     "the first bread is ready and the street smells of it."),
    ("Replace every 'colour' with 'color' in this text and reply with the full text.",
     "Pick a colour for the walls first. The colour of the floor should be darker than the walls, and the "
     "ceiling should be the lightest colour in the room."),
]

CHATS = [
    "Give me three tips for learning to cook.",
    "Why is the sky blue? Explain it to a ten-year-old.",
    "Write a short poem about a lighthouse.",
    "What should I pack for a weekend hiking trip?",
    "How do I make my houseplants grow better?",
    "Tell me a short story about a robot who learns to paint.",
    "What are some good habits for working from home?",
    "Explain what a database index is, in simple words.",
]


@dataclass(frozen=True, slots=True)
class ChatWorkload:
    name: str
    max_tokens: int
    items: list[list[dict]]  # one chat request's messages each


def _quote() -> list[list[dict]]:
    return [[{"role": "user", "content": f"Document:\n{doc}\n\nAnswer the question by quoting the sentences of "
                                         f"the document that answer it, word for word.\nQuestion: {q}"}]
            for doc, q in zip(DOCUMENTS, QUESTIONS)]


def _edit() -> list[list[dict]]:
    return [[{"role": "user", "content": f"{task}\n\n{text}"}] for task, text in EDITS]


def _chat() -> list[list[dict]]:
    return [[{"role": "user", "content": q}] for q in CHATS]


WORKLOADS = {"quote": (_quote, 256), "edit": (_edit, 256), "chat": (_chat, 128)}


def chat_workloads(names: list[str], seed: int, num_items: int | None = None,
                   max_tokens: int | None = None) -> list[ChatWorkload]:
    """The named workloads, their items in a seeded order (the same for every server), at most
    `num_items` each; `max_tokens` overrides each workload's own."""
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {sorted(WORKLOADS)}")
    out = []
    for name in names:
        build, default_max = WORKLOADS[name]
        items = build()
        random.Random(f"{seed}:{name}").shuffle(items)
        out.append(ChatWorkload(name, max_tokens or default_max, items[:num_items]))
    return out
