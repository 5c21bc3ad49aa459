"""Snippets that run code in a subprocess where torch cannot be imported (shared by tests)."""

from __future__ import annotations

#: Prepend to a script: any import of torch or torchvision raises ImportError.
BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, _Block())
"""

#: Append to a script: torch was never imported.
ASSERT_NO_TORCH = """
assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]
"""
