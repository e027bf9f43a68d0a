"""One-image reports to download: a PNG sheet and a one-page PDF.

Both show the image beside its heatmap overlay, the calibrated probabilities with the operating
threshold, the warnings, the subtype estimate, a summary of the model card, and the notice that this
is a research demo. A withheld prediction (not a chest X-ray like the training data) is reported as
"Not assessed" with its reason, and its probabilities are labelled as model output, not a diagnosis.
Nothing here touches the disk: the page hands the bytes to a download button.
The PDF uses fpdf2's core Helvetica, so every string goes through `latin1` first.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxrdemo.imaging.decode import LoadedImage
from cxrdemo.inference.predict import Prediction

NOTICE = "Research demo, not for clinical use"
TITLE = "cxrdemo - chest X-ray classifier report"
_PREFERRED_SPLITS = (("test", "Test"), ("official_val", "Official val"), ("val", "Validation"))
_HEADLINE_METRICS = (
    ("roc_auc", "AUROC"),
    ("accuracy", "accuracy"),
    ("macro_roc_auc", "macro AUROC"),
    ("macro_f1", "macro F1"),
)  # the keys cxrdemo.evaluation.metrics writes into cards
_ASCII = {
    "\u2026": "...",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2022": "-",
    "\u2265": ">=",
    "\u2264": "<=",
    "\u2192": "->",
}


# --- shared text -------------------------------------------------------------------------------------


def latin1(text: str) -> str:
    """Text the PDF core fonts can draw: common typography mapped to ASCII, anything else as '?'."""
    text = "".join(_ASCII.get(ch, ch) for ch in str(text))
    return text.encode("latin-1", "replace").decode("latin-1")


def _metric(entry: object) -> str | None:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return None
    text = f"{entry['value']:.3f}"
    ci = entry.get("ci")
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        text += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
    return text


def model_summary(card: dict) -> list[tuple[str, str]]:
    """(label, value) lines describing a model card: id, architecture, task, threshold, headline metrics."""
    lines = [("Model", str(card.get("id", "?")))]
    kind = card.get("kind", "classifier")
    arch = card.get("arch")
    if kind == "ensemble":
        lines.append(("Architecture", f"ensemble of {', '.join(card.get('members', []))}"))
    elif kind == "knn":
        lines.append(("Architecture", f"k-NN (k={card.get('k', '?')}) on {card.get('backbone', '?')} embeddings"))
    elif arch:
        lines.append(("Architecture", str(arch)))
    if card.get("task"):
        classes = card.get("classes") or []
        lines.append(("Task", f"{card['task']} ({' / '.join(classes)})" if classes else str(card["task"])))
    if card.get("threshold") is not None and len(card.get("classes") or []) == 2:
        lines.append(("Threshold", f"{float(card['threshold']):.3f} on P({card['classes'][1]})"))
    metrics = card.get("metrics") or {}
    for split, split_label in _PREFERRED_SPLITS:
        block = metrics.get(split)
        if not isinstance(block, dict):
            continue
        n = f", n={block['n']}" if block.get("n") else ""
        for key, name in _HEADLINE_METRICS:
            text = _metric(block.get(key))
            if text:
                lines.append((f"{split_label} {name}", text + n))
        break  # the most independent split only
    return lines


def _probability_lines(prediction: Prediction) -> list[str]:
    lines = [f"{cls}: {p:.1%}" for cls, p in prediction.probabilities.items()]
    if prediction.threshold is not None:
        positive = list(prediction.probabilities)[-1]
        lines.append(f"Decision threshold on P({positive}): {prediction.threshold:.3f}")
    return lines


def _subtype_line(prediction: Prediction) -> str | None:
    if not prediction.subtype:
        return None
    label = "Subtype model output (not assessed)" if prediction.withheld else "Subtype model"
    return f"{label}: " + ", ".join(f"{cls} {p:.0%}" for cls, p in prediction.subtype.items())


def _headline(prediction: Prediction) -> str:
    return f"Prediction: {prediction.verdict}"


def _probabilities_heading(prediction: Prediction) -> str | None:
    """A label above a withheld prediction's probability bars, so nobody reads them as a verdict."""
    return "Model output (not assessed, not a diagnosis):" if prediction.withheld else None


def _rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).convert("RGB")


# --- PNG ---------------------------------------------------------------------------------------------

_WIDTH, _MARGIN, _GAP = 1200, 40, 24
_INK, _MUTED, _ACCENT, _WARN = (33, 37, 41), (108, 117, 125), (214, 51, 108), (156, 100, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font
    except (TypeError, OSError, ImportError):  # no FreeType: the small bitmap font still works
        return ImageFont.load_default()


def _fit(img: Image.Image, box: int) -> Image.Image:
    """Scale (up or down) so the longer side is `box` pixels."""
    scale = box / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (latin-1 text: the bundled font lacks most other glyphs)."""
    out: list[str] = []
    for paragraph in latin1(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                out.append(line)
                line = word
            else:
                line = trial
        out.append(line)
    return out


def report_png(
    image: LoadedImage, overlay: np.ndarray, prediction: Prediction, card: dict, *, explained: str | None = None
) -> bytes:
    """A report sheet as PNG bytes; `explained` captions the overlay (method, class, network)."""
    title_f, head_f, body_f, small_f = _font(30), _font(22), _font(17), _font(14)
    canvas = Image.new("RGB", (_WIDTH, 4000), "white")
    draw = ImageDraw.Draw(canvas)
    inner = _WIDTH - 2 * _MARGIN
    y = _MARGIN

    draw.text((_MARGIN, y), TITLE, font=title_f, fill=_INK)
    y += 44
    banner = f"{NOTICE}. Predictions are not a diagnosis."
    draw.rectangle((_MARGIN, y, _WIDTH - _MARGIN, y + 36), fill=(255, 236, 240), outline=_ACCENT)
    draw.text((_MARGIN + 12, y + 8), banner, font=body_f, fill=_ACCENT)
    y += 36 + _GAP
    facts = f"File: {image.name}   |   {image.source_format}, {image.original_size[0]} x {image.original_size[1]} px"
    for line in _wrap(draw, facts, body_f, inner):
        draw.text((_MARGIN, y), line, font=body_f, fill=_MUTED)
        y += 24
    y += 8

    # image | overlay, each fitted into half the width
    box = (inner - _GAP) // 2
    tallest = 0
    for column, (pixels, caption) in enumerate(((image.pixels, "Image"), (overlay, explained or "Heatmap overlay"))):
        img = _fit(_rgb(pixels), box)
        x = _MARGIN + column * (box + _GAP)
        canvas.paste(img, (x, y))
        cy = y + img.height + 6
        for line in _wrap(draw, caption, small_f, box):
            draw.text((x, cy), line, font=small_f, fill=_MUTED)
            cy += 18
        tallest = max(tallest, cy - y)
    y += tallest + _GAP

    draw.text((_MARGIN, y), latin1(_headline(prediction)), font=head_f, fill=_ACCENT)
    y += 34
    if prediction.withheld_reason:
        for line in _wrap(draw, prediction.withheld_reason, body_f, inner):
            draw.text((_MARGIN, y), line, font=body_f, fill=_WARN)
            y += 24
        y += 8
    heading = _probabilities_heading(prediction)
    if heading:
        draw.text((_MARGIN, y), heading, font=body_f, fill=_MUTED)
        y += 28
    # probability bars with the threshold marked on the positive class
    label_w, bar_w = 220, inner - 220 - 90
    classes = list(prediction.probabilities)
    for cls in classes:
        p = prediction.probabilities[cls]
        draw.text((_MARGIN, y + 2), latin1(cls), font=body_f, fill=_INK)
        x0 = _MARGIN + label_w
        draw.rectangle((x0, y, x0 + bar_w, y + 24), fill=(241, 243, 245))
        colour = _ACCENT if cls == prediction.prediction else (173, 181, 189)
        draw.rectangle((x0, y, x0 + int(round(bar_w * p)), y + 24), fill=colour)
        draw.text((x0 + bar_w + 10, y + 2), f"{p:.1%}", font=body_f, fill=_INK)
        if prediction.threshold is not None and cls == classes[-1]:
            tx = x0 + int(round(bar_w * prediction.threshold))
            draw.line((tx, y - 4, tx, y + 28), fill=_INK, width=3)
        y += 32
    if prediction.threshold is not None:
        draw.text(
            (_MARGIN + label_w, y),
            f"| marks the decision threshold {prediction.threshold:.3f}",
            font=small_f,
            fill=_MUTED,
        )
        y += 22
    subtype = _subtype_line(prediction)
    if subtype:
        draw.text((_MARGIN, y), latin1(subtype), font=body_f, fill=_INK)
        y += 28
    y += 8

    if prediction.other_warnings:
        draw.text((_MARGIN, y), "Warnings", font=head_f, fill=_WARN)
        y += 30
        for warning in prediction.other_warnings:
            for i, line in enumerate(_wrap(draw, warning, body_f, inner - 20)):
                indent, bullet = (0, "- ") if i == 0 else (20, "")
                draw.text((_MARGIN + indent, y), bullet + line, font=body_f, fill=_WARN)
                y += 24
        y += 8

    draw.text((_MARGIN, y), "Model", font=head_f, fill=_INK)
    y += 30
    for label, value in model_summary(card):
        draw.text((_MARGIN, y), latin1(label), font=body_f, fill=_MUTED)
        for line in _wrap(draw, value, body_f, inner - 240):
            draw.text((_MARGIN + 240, y), line, font=body_f, fill=_INK)
            y += 24
    y += _GAP
    draw.line((_MARGIN, y, _WIDTH - _MARGIN, y), fill=(222, 226, 230), width=1)
    y += 10
    draw.text((_MARGIN, y), f"{NOTICE}.", font=small_f, fill=_ACCENT)
    y += 18 + _MARGIN

    buffer = BytesIO()
    canvas.crop((0, 0, _WIDTH, min(y, canvas.height))).save(buffer, format="PNG")
    return buffer.getvalue()


# --- PDF ---------------------------------------------------------------------------------------------


def _png_stream(pixels: np.ndarray, longest: int = 1024) -> BytesIO:
    img = _rgb(pixels)
    img.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    img.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def report_pdf(
    image: LoadedImage,
    overlay: np.ndarray,
    prediction: Prediction,
    card: dict,
    *,
    explained: str | None = None,
    compress: bool = True,
) -> bytes:
    """A one-page A4 report as PDF bytes (`compress=False` leaves the text streams readable)."""
    from fpdf import FPDF  # here, not at the top: 0.13 s of the Diagnose page's first answer after a start

    pdf = FPDF(unit="mm", format="A4")
    pdf.set_compression(compress)
    pdf.set_title(latin1(TITLE))
    pdf.set_creator("cxrdemo")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def line(text: str, size: float = 10, style: str = "", colour: tuple[int, int, int] = _INK, h: float = 5.5):
        pdf.set_font("Helvetica", style, size)
        pdf.set_text_color(*colour)
        pdf.multi_cell(width, h, latin1(text), align="L", new_x="LMARGIN", new_y="NEXT")

    line(TITLE, 16, "B", h=8)
    pdf.set_fill_color(255, 236, 240)
    pdf.set_draw_color(*_ACCENT)
    pdf.set_font("Helvetica", "B", 11)
    pdf.set_text_color(*_ACCENT)
    pdf.cell(
        width,
        8,
        latin1(f"{NOTICE}. Predictions are not a diagnosis."),
        border=1,
        fill=True,
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(2)
    line(
        f"File: {image.name}  |  {image.source_format}, {image.original_size[0]} x {image.original_size[1]} px",
        9,
        colour=_MUTED,
    )
    pdf.ln(2)

    # image | overlay side by side, scaled to a common height that fits the column width
    gap = 6
    box_w = (width - gap) / 2
    aspect = image.pixels.shape[0] / image.pixels.shape[1]
    box_h = min(box_w * aspect, 90)
    img_w = box_h / aspect
    top = pdf.get_y()
    for column, (pixels, caption) in enumerate(((image.pixels, "Image"), (overlay, explained or "Heatmap overlay"))):
        x = pdf.l_margin + column * (box_w + gap)
        pdf.image(_png_stream(pixels), x=x, y=top, w=img_w, h=box_h)
        pdf.set_xy(x, top + box_h + 1)
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(*_MUTED)
        pdf.multi_cell(box_w, 4, latin1(caption), align="L")
    pdf.set_xy(pdf.l_margin, top + box_h + 12)

    line(_headline(prediction), 14, "B", _ACCENT, h=8)
    if prediction.withheld_reason:
        line(prediction.withheld_reason, 10, colour=_WARN)
        pdf.ln(1)
    heading = _probabilities_heading(prediction)
    if heading:
        line(heading, 9, colour=_MUTED)
    label_w, bar_w, bar_h = 40, width - 40 - 22, 5
    classes = list(prediction.probabilities)
    for cls in classes:
        p = prediction.probabilities[cls]
        y = pdf.get_y()
        pdf.set_font("Helvetica", "", 10)
        pdf.set_text_color(*_INK)
        pdf.set_xy(pdf.l_margin, y)
        pdf.cell(label_w, bar_h, latin1(cls))
        x0 = pdf.l_margin + label_w
        pdf.set_fill_color(241, 243, 245)
        pdf.rect(x0, y, bar_w, bar_h, style="F")
        pdf.set_fill_color(*(_ACCENT if cls == prediction.prediction else (173, 181, 189)))
        if p > 0:
            pdf.rect(x0, y, bar_w * p, bar_h, style="F")
        if prediction.threshold is not None and cls == classes[-1]:
            pdf.set_draw_color(*_INK)
            pdf.set_line_width(0.6)
            tx = x0 + bar_w * prediction.threshold
            pdf.line(tx, y - 1, tx, y + bar_h + 1)
            pdf.set_line_width(0.2)
        pdf.set_xy(x0 + bar_w + 2, y)
        pdf.cell(20, bar_h, f"{p:.1%}")
        pdf.set_xy(pdf.l_margin, y + bar_h + 2)
    for text in _probability_lines(prediction)[len(classes) :]:
        line(text, 9, colour=_MUTED)
    subtype = _subtype_line(prediction)
    if subtype:
        line(subtype, 10)
    pdf.ln(2)

    if prediction.other_warnings:
        line("Warnings", 12, "B", _WARN, h=7)
        for warning in prediction.other_warnings:
            line(f"- {warning}", 10, colour=_WARN)
        pdf.ln(2)

    line("Model", 12, "B", h=7)
    for label, value in model_summary(card):
        y = pdf.get_y()
        pdf.set_font("Helvetica", "", 10)
        pdf.set_text_color(*_MUTED)
        pdf.cell(45, 5.5, latin1(label))
        pdf.set_text_color(*_INK)
        pdf.multi_cell(width - 45, 5.5, latin1(value), align="L", new_x="LMARGIN", new_y="NEXT")
        if pdf.get_y() == y:  # multi_cell on a fresh page; keep moving down
            pdf.ln(5.5)
    pdf.ln(4)
    line(f"{NOTICE}.", 9, "B", _ACCENT)
    return bytes(pdf.output())
