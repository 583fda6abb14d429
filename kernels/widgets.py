"""The buttons under a suggestion: Accept, Reject, Regenerate, Explain this.

Button callbacks run from a widget message, not from a cell execution, so they cannot insert a cell
(`set_next_input` only travels with a cell's execute reply). A regenerated suggestion is therefore
shown in the widget's output area with its own buttons, and `%copilot insert` puts it in a new cell.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from contextlab.kernels.render import Throttled, explanation_bundle, suggestion_bundle
from contextlab.kernels.session import CellError, CopilotSession, Record

log = logging.getLogger("contextlab.kernels")


class SuggestionView:
    """The widgets of one suggestion; `widget` is what is displayed."""

    def __init__(self, session: CopilotSession, record: Record) -> None:
        import ipywidgets as w

        self.session = session
        self.record = record
        self.accept = w.Button(description="Accept", icon="check", button_style="success", tooltip="Record: accepted")
        self.reject = w.Button(description="Reject", icon="times", button_style="danger", tooltip="Record: rejected")
        self.regenerate = w.Button(description="Regenerate", icon="refresh", tooltip="Ask the model again")
        self.explain = w.Button(description="Explain this", icon="question", tooltip="Explain the code in plain words")
        self.status = w.HTML(value="")
        self.output = w.Output()
        self.children: list[SuggestionView] = []
        self.accept.on_click(self._on_accept)
        self.reject.on_click(self._on_reject)
        self.regenerate.on_click(self._on_regenerate)
        self.explain.on_click(self._on_explain)
        self.widget = w.VBox(
            [w.HBox([self.accept, self.reject, self.regenerate, self.explain]), self.status, self.output]
        )
        session.views[record.id] = self

    # -- status line ----------------------------------------------------------------------------------
    def say(self, text: str, *, error: bool = False) -> None:
        style = "color:#b00020" if error else "color:#555"
        self.status.value = f'<span style="{style}">{html.escape(text)}</span>'

    def _stream(self, label: str) -> Throttled:
        def show(text: str) -> None:
            self.status.value = f"<i>{html.escape(label)}…</i><pre>{html.escape(text)}</pre>"

        return Throttled(show)

    def _busy(self, busy: bool) -> None:
        for button in (self.regenerate, self.explain):
            button.disabled = busy

    # -- callbacks ------------------------------------------------------------------------------------
    def _on_accept(self, _button: Any = None) -> None:
        self.session.feedback(self.record.id, "accepted")
        self.accept.disabled = self.reject.disabled = True
        self.say("Accepted. Thank you: this feedback improves future suggestions.")

    def _on_reject(self, _button: Any = None) -> None:
        self.session.feedback(self.record.id, "rejected")
        self.accept.disabled = self.reject.disabled = True
        self.say("Rejected. Try Regenerate, or reword the request.")

    def _on_regenerate(self, _button: Any = None) -> None:
        self._busy(True)
        stream = self._stream("Regenerating")
        try:
            record = self.session.generate(self.record.request, on_token=stream)
        except CellError as exc:
            self.say(str(exc), error=True)
            return
        except Exception as exc:  # a widget callback has nowhere else to report
            log.exception("regenerate failed")
            self.say(f"Unexpected {type(exc).__name__}: {exc}", error=True)
            return
        finally:
            self._busy(False)
        child = SuggestionView(self.session, record)
        self.children.append(child)
        note = (
            "Run `%copilot insert` in a cell to insert this suggestion as a new cell."
            if record.cell
            else "Nothing to insert: the answer held no code."
        )
        self.output.outputs = (
            {
                "output_type": "display_data",
                "data": suggestion_bundle(record, note),
                "metadata": {"contextlab": record.suggestion.provenance()},
            },
        )
        self.output.append_display_data(child.widget)
        self.say(f"New suggestion {record.id[:12]} below.")

    def _on_explain(self, _button: Any = None) -> None:
        self._busy(True)
        stream = self._stream("Explaining")
        try:
            text = self.session.explain(self.record, on_token=stream)
        except CellError as exc:
            self.say(str(exc), error=True)
            return
        except Exception as exc:
            log.exception("explain failed")
            self.say(f"Unexpected {type(exc).__name__}: {exc}", error=True)
            return
        finally:
            self._busy(False)
        self.say("")
        self.output.outputs = (
            *self.output.outputs,
            {"output_type": "display_data", "data": explanation_bundle(text), "metadata": {}},
        )
