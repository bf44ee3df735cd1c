"""The reference's question and answer templates (data, so that training speaks the released models' language)."""
from lisa_model.constants import IMAGE_TOKEN

SHORT_QUESTIONS = [
    IMAGE_TOKEN + "\n" + "Can you segment the {class_name} in this image?",
    IMAGE_TOKEN + "\n" + "Please segment the {class_name} in this image.",
    IMAGE_TOKEN + "\n" + "What is {class_name} in this image? Please respond with segmentation mask.",
    IMAGE_TOKEN + "\n" + "What is {class_name} in this image? Please output segmentation mask.",
]
LONG_QUESTIONS = [
    IMAGE_TOKEN + "\n" + "{sent} Please respond with segmentation mask.",
    IMAGE_TOKEN + "\n" + "{sent} Please output segmentation mask.",
]
EXPLANATORY_QUESTIONS = [
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
]
ANSWERS = [
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
]
# Answers to a question whose target is not in the image (our household data; the reference has none): text only,
# no [SEG], so a robot hears "there is none" instead of getting an empty mask.
NO_TARGET_ANSWERS = [
    "Sorry, I cannot find it in this image.",
]

# Several targets in one question, each answered by a slot (GSVA's data, constants.py MODE4): "{names}" is the
# comma-joined, lower-cased expressions; an answer is START + " " + ", ".join(TEMPLATE per target) + ".", one
# (START, TEMPLATE) pair per sample, with "{slot}" = "[SEG]", or "[REJ]" for a target that is not in the image.
MULTI_TARGET_QUESTIONS = [
    IMAGE_TOKEN + "\n" + "Can you segment {names} in this image?",
    IMAGE_TOKEN + "\n" + "Please segment {names} in this image.",
    IMAGE_TOKEN + "\n" + "What are {names} in this image? Please respond with segmentation masks.",
    IMAGE_TOKEN + "\n" + "What are {names} in this image? Please output segmentation masks.",
]
MULTI_TARGET_ANSWERS = [
    ("The segmentation results are", "{name} {slot}"),
    ("Sure, they are", "{name}:{slot}"),
    ("Sure,", "the mask of {name} is {slot}"),
    ("Sure,", "the segmentation of {name} is {slot}"),
    ("Sure,", "the referred {name} is {slot}"),
]
REJ_TOKEN = "[REJ]"
