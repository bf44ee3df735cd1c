"""Token-level constants shared by the tokenizer, the model and training."""
IMAGE_TOKEN = "<image>"
IM_START = "<im_start>"
IM_END = "<im_end>"
SEG_TOKEN = "[SEG]"
IMAGE_TOKEN_INDEX = -200  # stands for the image in input_ids; the model splices the CLIP tokens in there
IGNORE_INDEX = -100  # label of positions that take no part in the language-model loss
