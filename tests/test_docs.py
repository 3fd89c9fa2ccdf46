"""The docs site's generated references, run without Sphinx, and the README front page.

``docs/_ext/btu_reference.py`` writes the configuration and command references
at every ``sphinx-build``; its functions are pure, so these tests call them
directly and stay fast.  ``bash scripts/docs.sh`` builds the site itself.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.cli import EVERY_USER_COMMANDS, FRAPPE_COMMANDS, build_parser
from btu_twisted.config import toml_fields

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "docs" / "_ext" / "btu_reference.py"
EXAMPLE_TOML = ROOT / "etc" / "btu_scheduler.toml"
README = ROOT / "README.rst"


def _extension() -> ModuleType:
    """docs/_ext/btu_reference.py, imported by path (docs/ is no package)."""
    name = "btu_reference_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXTENSION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


class ConfigReferenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ref = _extension()
        self.keys = [spec.name for spec in toml_fields()]
        self.text, self.problems = self.ref.config_reference(
            toml_fields(), EXAMPLE_TOML.read_text(encoding="utf-8"))

    def test_no_problems(self) -> None:
        """Every Config key has a description and an example in etc/btu_scheduler.toml,
        is in exactly one group, and the TOML describes no key that is gone."""
        self.assertEqual(self.problems, [])

    def test_every_key_with_its_description(self) -> None:
        """Each key has its own section, and the section carries the TOML's words."""
        docs = self.ref.parse_toml_comments(EXAMPLE_TOML.read_text(encoding="utf-8"))
        for key in self.keys:
            self.assertIn(f".. _config-{key}:", self.text, key)
            self.assertIn(key, docs, key)
            section = self.text.split(f".. _config-{key}:", 1)[1].split(".. _config-", 1)[0]
            first_words = " ".join(docs[key].lines[0].split()[:3])
            self.assertTrue(first_words, key)
            self.assertIn(self.ref.rst_escape(first_words), section, key)
            self.assertNotIn("(no description)", section, key)

    def test_every_key_is_classified(self) -> None:
        """Every key names the set-ups that use it; only known set-ups."""
        self.assertEqual(self.ref.classification_problems(self.keys), [])
        for key in self.keys:
            modes = self.ref.modes_of(key)
            self.assertTrue(modes, key)
            self.assertLessEqual(set(modes), set(self.ref.MODES), key)

    def test_a_missing_description_is_a_problem(self) -> None:
        """A key without its comment block is reported (the build turns it into an error)."""
        toml = EXAMPLE_TOML.read_text(encoding="utf-8").replace("# metrics_host:", "# gone:")
        _, problems = self.ref.config_reference(toml_fields(), toml)
        self.assertTrue(any("'metrics_host' has no description" in p for p in problems), problems)

    def test_wrapped_comment_line_is_not_a_key(self) -> None:
        """A wrapped line that looks like ``# word: ...`` inside a block stays comment."""
        docs = self.ref.parse_toml_comments(
            "# a_key: string.  One site's daemons per\n# prefix: a daemon finds it.\n"
            "#a_key = \"x\"\n")
        self.assertEqual(list(docs), ["a_key"])
        self.assertEqual(docs["a_key"].example, 'a_key = "x"')
        self.assertFalse(docs["a_key"].set_in_example)


class CliReferenceTests(SynchronousTestCase):
    def test_every_subcommand(self) -> None:
        """Each subcommand of the parser has a section with its usage and arguments."""
        ref = _extension()
        parser = build_parser(io.StringIO(), io.StringIO())
        text = ref.cli_reference(parser)
        names = ref.subcommand_names(parser)
        self.assertIn("next-runs", names)
        self.assertIn("print-config", names)
        for name in names:
            self.assertIn(f".. _cli-{name}:", text, name)
            self.assertIn(f"usage: btu {name}", text, name)
        self.assertIn("``--tz ZONE``", text)

    def test_frappe_commands_apart(self) -> None:
        """The reference groups the commands as ``btu --help`` does: every command
        once, the Frappe-only ones under their own title, after the others."""
        ref = _extension()
        parser = build_parser(io.StringIO(), io.StringIO())
        groups = dict(ref.command_groups(parser))
        self.assertEqual(list(groups), [EVERY_USER_COMMANDS, FRAPPE_COMMANDS])
        self.assertEqual(sorted(n for names in groups.values() for n in names),
                         sorted(ref.subcommand_names(parser)))
        self.assertEqual(groups[FRAPPE_COMMANDS],
                         ["list-tasks", "queue-task-now", "test-ping", "test-pickler"])
        text = ref.cli_reference(parser)
        self.assertLess(text.index("Frappe-only commands"), text.index(":ref:`list-tasks"))
        self.assertLess(text.index(":ref:`status"), text.index("Frappe-only commands"))


class ReadmeTests(SynchronousTestCase):
    def test_short_front_page_opening_with_the_two_commands(self) -> None:
        """README.rst is at most 300 lines and opens with its title and the two commands."""
        lines = README.read_text(encoding="utf-8").splitlines()
        self.assertLessEqual(len(lines), 300)
        self.assertEqual(lines[0], "btu_twisted")
        self.assertEqual(lines[3], ".. code-block:: sh")
        commands = [line.split("#")[0].strip() for line in lines[5:7]]
        self.assertEqual(commands, ["bash scripts/demo.sh", "bash scripts/test.sh"])
        self.assertEqual(lines[7], "")

    def test_links_to_docs_pages_that_exist(self) -> None:
        """Every docs/*.rst the README links to is there."""
        text = README.read_text(encoding="utf-8")
        linked = set(re.findall(r"<(docs/[\w-]+\.rst)>`_", text))
        self.assertIn("docs/configuration.rst", linked)
        for path in linked:
            self.assertTrue((ROOT / path).is_file(), path)
