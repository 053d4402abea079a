"""Tasks (what to train and how to evaluate it); importing registers them."""
from lavislike.tasks.base_task import BaseTask, setup_task
from lavislike.tasks.captioning import CaptionTask
from lavislike.tasks.image_text_pretrain import ImageTextPretrainTask
from lavislike.tasks.retrieval import RetrievalTask
from lavislike.tasks.vqa import GQATask, VQATask

__all__ = ["BaseTask", "setup_task", "CaptionTask", "ImageTextPretrainTask", "RetrievalTask", "VQATask", "GQATask"]
