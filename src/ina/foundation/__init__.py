"""The foundation under every room: what two rooms need is written once, here.

``files`` (atomic writes, JSON results), ``errors`` (the usage error every command turns into one line
and exit code 2), ``models`` (base model and tokenizer loading, one ``dtype="auto"`` rule),
``adapters`` (``NAME=PATH`` specs, the adapter flags and the ``InAConfig`` builder), ``prompts``
(prompt templates and ``ina_prompt.json``), ``attention`` (capturing attention maps), ``charts``
(matplotlib figures written as PNG). Modules here import the core and each other, never a room.
"""
