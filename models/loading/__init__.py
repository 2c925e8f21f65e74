"""Everything that turns files on disk into models, one concept per module:

headers.py      safetensors headers (never tensor data) and the loading errors
files.py        the one weight-file finder (shard indexes, pickle refusal)
keys.py         original <-> diffusers transformer key names
detect.py       version / size / kind / layout of a model folder or a single transformer file
stream.py       the one streaming loader that fills every component built on the meta device
transformer.py  the MMDiT: config from folder or file, storage rule (bf16 / fp8 modes), load
text.py         the text encoders' files and their meta-built transformers models

`models/checkpoint.py` keeps the old import path of the first five.
"""
