"""CoT's offline tools, used by `livecast cot …` and `livecast bench cot`, never by serving.

- `cli`: the `livecast cot build` command, beside what it runs
- `autocot`: the Auto-CoT demo builder (cluster questions, generate and filter rationales)
- `dataset`: question files (JSONL) and the shipped sets in `data/`
- `selfconsistency`: KV blocks shared by self-consistency's chains, measured on a real engine

They import the serving core (`cot.answers`, `demos`, `prompts`, `spec`, `runner`); no serving
module imports them.
"""
