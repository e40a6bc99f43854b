"""Prints the README's two commands (the bash blocks under "## Two commands"), one per line."""

import re
import sys

text = open(sys.argv[1]).read()
section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
commands = [" ".join(b.strip().replace("\\\n", " ").split("\n")) for b in blocks]
if len(commands) != 2:
    sys.exit(f"README.md: expected 2 bash blocks under '## Two commands', found {len(commands)}")
print("\n".join(commands))
