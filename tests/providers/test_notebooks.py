"""The notebooks provider on real files: listing, reading with truncation, search, and path safety."""

from __future__ import annotations

import asyncio
import os

import nbformat
import pytest
from mcp import Client
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from contextlab.providers.base import ProviderError
from contextlab.providers.notebooks import NotebooksProvider


@pytest.fixture()
def root(tmp_path):
    nb = new_notebook(
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
        cells=[
            new_markdown_cell("# Churn model\nPredicts churn from usage."),
            new_code_cell(
                "print('x' * 5000)",
                execution_count=1,
                outputs=[new_output("stream", name="stdout", text="x" * 5000)],
            ),
            new_code_cell(
                "plot()",
                execution_count=2,
                outputs=[
                    new_output(
                        "display_data",
                        data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480>"},
                    )
                ],
            ),
            new_code_cell(
                "1/0",
                execution_count=3,
                outputs=[new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])],
            ),
        ],
    )
    (tmp_path / "models").mkdir()
    nbformat.write(nb, tmp_path / "models" / "churn.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("SELECT churn FROM users")]), tmp_path / "query.ipynb")
    (tmp_path / ".hidden").mkdir()
    nbformat.write(new_notebook(), tmp_path / ".hidden" / "secret.ipynb")
    (tmp_path / "broken.ipynb").write_text("{not a notebook")
    return tmp_path


def test_list_skips_hidden_folders_and_unreadable_files(root):
    listing = NotebooksProvider(root).list_notebooks()
    assert [n.path for n in listing.notebooks] == ["models/churn.ipynb", "query.ipynb"]
    churn = listing.notebooks[0]
    assert churn.cell_count == 4 and churn.kernel == "python3" and churn.uri == "notebook://models/churn.ipynb"
    assert [n.path for n in NotebooksProvider(root).list_notebooks(prefix="models").notebooks] == ["models/churn.ipynb"]


def test_read_truncates_outputs_and_omits_images(root):
    content = NotebooksProvider(root, max_output_chars=100).read_notebook("models/churn.ipynb")
    stream = content.cells[1].outputs[0]
    assert len(stream.text) == 100 and stream.truncated
    figure = content.cells[2].outputs[0]
    assert figure.omitted == ["image/png"] and figure.text == "<Figure size 640x480>"
    assert content.cells[3].outputs[0].text == "ZeroDivisionError: division by zero"
    bare = NotebooksProvider(root).read_notebook("models/churn.ipynb", include_outputs=False)
    assert all(not c.outputs for c in bare.cells)


def test_search_finds_cells_and_reports_progress(root):
    provider = NotebooksProvider(root)

    async def go():
        async with Client(provider.as_server()) as client:
            progress = []

            async def on_progress(p, total, message):
                progress.append((p, total))

            result = await client.call_tool("search", {"query": "CHURN"}, progress_callback=on_progress)
            return result.structured_content, progress

    result, progress = asyncio.run(go())
    assert {(h["path"], h["cell_index"]) for h in result["hits"]} == {
        ("models/churn.ipynb", 0),
        ("query.ipynb", 0),
    }
    assert progress and progress[-1][0] == progress[-1][1]


def test_invalid_regex_is_explained(root):
    with pytest.raises(ProviderError, match="Invalid regular expression"):
        asyncio.run(NotebooksProvider(root).search("(", ctx=None, regex=True))


@pytest.mark.parametrize(
    ("path", "phrase"),
    [
        ("../outside.ipynb", "outside the server root"),
        ("models/../../outside.ipynb", "outside the server root"),
        ("/etc/passwd", "Absolute paths are not allowed"),
        (".hidden/secret.ipynb", "Hidden files"),
        ("escape/evil.ipynb", "outside the server root"),
        ("models/missing.ipynb", "No notebook at"),
        ("models", "is not a notebook"),
        ("broken.ipynb", "not a readable notebook"),
        ("", "Empty path"),
    ],
)
def test_paths_that_leave_the_root_or_do_not_exist_are_refused(root, tmp_path_factory, path, phrase):
    outside = tmp_path_factory.mktemp("outside")
    nbformat.write(new_notebook(), outside / "evil.ipynb")
    if not (root / "escape").exists():
        os.symlink(outside, root / "escape")
    with pytest.raises(ProviderError) as info:
        NotebooksProvider(root).read_notebook(path)
    assert phrase in str(info.value)


def test_standalone_server_serves_the_notebook_resource(root):
    async def go():
        async with Client(NotebooksProvider(root).as_server()) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            resource = await client.read_resource("notebook://models/churn.ipynb")
            return tools, resource.contents[0].text

    tools, text = asyncio.run(go())
    assert tools == {"list", "read", "search"}
    assert '"path":"models/churn.ipynb"' in text
