"""Generated text-to-SQL records and tiny Llama models, for tests, benchmarks and smoke runs.

Nothing here touches the hub: records come from templates in the style of
sql-create-context (question, CREATE TABLE context, SQL answer), with a realistic spread
of lengths (1-5 tables of 2-13 columns each, most records with one table); the tokenizer is a byte-level BPE trained on
those records; the model is a randomly initialised LlamaForCausalLM.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

_TABLES = ("head", "department", "player", "match", "station", "employee", "race", "school", "track", "film",
           "election", "ship", "county", "wrestler", "city", "airport", "student", "course", "book", "club")
_TEXT_COLUMNS = ("name", "city", "country", "position", "team", "location", "nationality", "title", "result",
                 "opponent", "venue", "surface", "builder", "status", "party", "district", "director", "genre")
_INT_COLUMNS = ("age", "year", "rank", "points", "wins", "attendance", "capacity", "population", "score",
                "budget", "id", "round", "goals", "laps", "enrollment")
_VALUES = ("alabama", "john smith", "new york", "forward", "united states", "clay", "won", "lost", "paris",
           "democratic", "district 7", "round 3", "toronto", "hard", "drama", "green bay", "el paso", "spain")


def _table(rng: random.Random, name: str) -> tuple[str, list[tuple[str, str]]]:
    n_text = rng.randint(1, 8)
    n_int = rng.randint(1, 5)
    columns = [(c, "VARCHAR") for c in rng.sample(_TEXT_COLUMNS, n_text)]
    columns += [(c, "INTEGER") for c in rng.sample(_INT_COLUMNS, n_int)]
    rng.shuffle(columns)
    ddl = f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in columns)})"
    return ddl, columns


def synthetic_sql_record(rng: random.Random) -> dict:
    """One sql-create-context-style record whose answer runs against its own schema."""
    names = rng.sample(_TABLES, rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 5)))
    tables = [_table(rng, n) for n in names]
    context = "; ".join(ddl for ddl, _ in tables)
    table, columns = names[0], tables[0][1]
    text_cols = [c for c, t in columns if t == "VARCHAR"]
    int_cols = [c for c, t in columns if t == "INTEGER"]
    target = rng.choice([c for c, _ in columns])
    value = rng.choice(_VALUES)
    kind = rng.randrange(5)
    if kind == 0:
        col = rng.choice(text_cols)
        question = f"What is the {target} of the {table} whose {col} is {value}?"
        answer = f'SELECT {target} FROM {table} WHERE {col} = "{value}"'
    elif kind == 1:
        col, number = rng.choice(int_cols), rng.randint(1, 90)
        question = f"How many {table} entries have a {col} greater than {number}?"
        answer = f"SELECT COUNT(*) FROM {table} WHERE {col} > {number}"
    elif kind == 2:
        col, text_col = rng.choice(int_cols), rng.choice(text_cols)
        question = f"What is the highest {col} for {table} with {text_col} {value}?"
        answer = f'SELECT MAX({col}) FROM {table} WHERE {text_col} = "{value}"'
    elif kind == 3:
        col = rng.choice(int_cols)
        question = f"Which {target} has the lowest {col} in {table}?"
        answer = f"SELECT {target} FROM {table} ORDER BY {col} LIMIT 1"
    else:
        col1, col2 = rng.choice(text_cols), rng.choice(text_cols)
        value2 = rng.choice(_VALUES)
        question = f"List the {target} of {table} when {col1} is {value} and {col2} is {value2}."
        answer = f'SELECT {target} FROM {table} WHERE {col1} = "{value}" AND {col2} = "{value2}"'
    return {"question": question, "context": context, "answer": answer}


def synthetic_sql_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [synthetic_sql_record(rng) for _ in range(n)]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer wrapped as PreTrainedTokenizerFast, adding BOS like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_llama(tokenizer, *, hidden_size: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 1024,
               init_std: float = 0.2, seed: int = 0):
    """A randomly initialised LlamaForCausalLM sized for CPU tests.

    init_std is larger than Llama's 0.02: with a 64-wide model, 0.02 caps the logits near
    uniform, and a LoRA adapter (which leaves lm_head alone) could barely lower the loss.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, initializer_range=init_std)
    return LlamaForCausalLM(config)


def save_tiny_base_model(directory: Path, records: list[dict], **model_kwargs) -> Path:
    """Tokenizer trained on `records` + tiny Llama, saved like a hub checkpoint (usable as model.base)."""
    texts = [f"{r['question']}\n{r['context']}\n{r['answer']}" for r in records]
    tokenizer = train_bpe_tokenizer(texts)
    model = tiny_llama(tokenizer, **model_kwargs)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory
