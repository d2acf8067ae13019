"""Language models: danlu's GPT and everything around it, as one package.

    model.py       GPTConfig, attention, MLP, Block, GPT, KVCache (read it like nanoGPT's)
    hf.py          Hugging Face GPT-2 folders <-> GPT (from_hf, export_hf)
    cpu/           what exists only for decoding speed on a CPU, installed by cpu.accelerate
    options.py     GenerationOptions: the one options type and validation
    generate.py    danlu's decoding engine (KV cache, sampling, beam search)
    hf_generate.py transformers' generate for other causal LMs
    tokenizer.py   the Tokenizer interface (tokenizers / transformers)
    load.py        a model reference -> LoadedLM (danlu run, HF GPT-2, HF causal LM)
    complete.py    text in, text out; danlu.generate and danlu.generate_stream
    data.py        corpus -> tokenizer + packed blocks;  task.py: next-token prediction
    instructions.py prompt/completion and chat rows -> ids + labels, one per row or packed
    build.py       the `gpt` model builder, fine-tuning from a checkpoint, LoRA
    finetune.py    `causal_lm`: fine-tuning a Llama-family checkpoint on danlu's Llama
    evaluation.py  a run's validation perplexity and report; sliding-window perplexity of a text
    choices.py     multiple-choice scoring by log-likelihood (lm-evaluation-harness style)
    export.py      a run -> a Hugging Face GPT-2 folder; llama_export.py: causal_lm runs

The core (data/, models/, tasks/, ...) reaches this package only by "module:attr" names.
"""
