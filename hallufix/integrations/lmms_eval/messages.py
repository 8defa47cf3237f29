"""A chat request's messages (lmms-eval's ``doc_to_messages`` output) → the one image and question hallufix asks.

hallufix applies each model's own chat template to a plain question with one image
(:meth:`hallufix.api.MethodRun.generate`), so a request must be one user turn with exactly one image and its text;
a system turn, earlier turns, a video, audio or another number of images is refused with :class:`RequestRefused`
naming the document. Text parts of the user turn are joined with a newline, in order.
"""
from __future__ import annotations


class RequestRefused(ValueError):
    """A request hallufix cannot ask as one image and one question."""


def image_and_question(messages: list, where: str) -> tuple[object, str]:
    """``(PIL image, question text)`` of one request's messages (lmms-eval ``ChatMessages``-shaped dicts)."""
    from lmms_eval.protocol import ChatMessages

    chat = ChatMessages(messages=messages)
    roles = [m.role for m in chat.messages]
    if roles != ["user"]:
        hint = (" (a --system_instruction: hallufix uses each model's own chat template and prompt)"
                if "system" in roles else "")
        raise RequestRefused(f"{where}: hallufix asks one user turn, the request has turns {roles}{hint}")
    images, texts = [], []
    for part in chat.messages[0].content:
        if part.type == "image":
            images.append(part.url)
        elif part.type == "text":
            texts.append(part.text)
        else:
            raise RequestRefused(f"{where}: hallufix takes images and text, the request holds a {part.type}")
    if len(images) != 1:
        raise RequestRefused(f"{where}: hallufix asks one image per question, the request holds {len(images)}")
    image = images[0]
    if not hasattr(image, "convert"):
        raise RequestRefused(f"{where}: the image is a {type(image).__name__}, not a PIL image")
    return image.convert("RGB"), "\n".join(texts)
