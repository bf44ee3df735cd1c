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
