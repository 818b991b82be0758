"""The chat format of the embedded model, and ``format_chat`` for any tokenizer.

Rule for callers: with a chat template the text already holds the template's special tokens, so
tokenize it with ``add_special_tokens=False``; without one, let the tokenizer add its own (BOS).
The embedded tokenizer adds none either way, so both give the same ids for it.
"""

from __future__ import annotations

from typing import Any

BOS = "<|bos|>"
END = "<|end|>"  # ends every turn; the model's EOS, so generation stops after its answer
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, END, PAD, *ROLE_TOKENS)

# <|bos|><|user|>\n{prompt}<|end|>\n<|assistant|>\n{answer}<|end|>\n
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def format_chat(tokenizer: Any, prompt: str, response: str | None = None) -> str:
    """One user turn (and the assistant's ``response``, when given) as model input text.

    Without ``response`` the text ends where the assistant's answer starts, so it is both the
    generation prompt and, for the embedded template, an exact prefix of the text with a response
    (a trainer masks the loss on that prefix). Tokenizers without a chat template get
    ``"{prompt}\\n"``, and ``"{prompt}\\n{response}{eos}"`` with a response.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if response is None:
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        messages.append({"role": "assistant", "content": response})
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if response is None:
        return f"{prompt}\n"
    return f"{prompt}\n{response}{tokenizer.eos_token or ''}"
