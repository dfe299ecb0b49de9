"""Text the int8 decode path (engine/quant.py) reads once to measure the range of each product's
input channels: prose of the kind the reader is given, written for this project (no book of the
evaluation sets), with dialogue, names, numbers and a question and answer in the chat format's
plain words."""

CALIBRATION_TEXT = """\
CHAPTER III. THE LIGHTHOUSE KEEPER'S LEDGER

The rain had not stopped for three days when Margaret Ellery climbed the hundred and twelve steps of the
north tower with the ledger under her arm. Her father had kept the light for thirty-one years, and in all
that time, he liked to say, the lamp had never once gone dark before dawn. She set the book on the iron
table, wiped the salt from the window with her sleeve, and looked out at the grey water.

"You'll want the oil counted before the inspector comes," said Tom Harrow from the doorway. He was the
assistant keeper, a tall young man from Falmouth who had arrived in March with a single trunk and a
violin he never played.

"I counted it last night," Margaret answered. "Forty-six gallons in the cellar and nine in the tank. If
the supply boat is late again we shall have to burn it thin."

Tom shrugged off his wet coat. "The boat won't be late. Captain Pellow has never missed a Thursday."

"He missed two in January." She opened the ledger and ran her finger down the columns: the date, the
hour of lighting, the hour of extinguishing, the weather, the ships sighted. On the fourteenth of
January her father had written, in his small square hand, "Brig Eleanor passed at 4 a.m., bound east,
no lights showing." It was the last entry before his illness.

Nobody in the village of St. Aubyn had seen the Eleanor come into any harbour. The newspapers in
Penzance printed a paragraph about her, then another, and then nothing at all. Margaret had read both
paragraphs so often that she knew them by heart: a vessel of two hundred and forty tons, carrying slate
and copper ore, seven men aboard, Captain Josiah Wren commanding.

Why would a ship sail at night with her lamps out? Smugglers did, of course, and the coast had been
famous for them once. But the Eleanor was an honest ship with an honest cargo, and Wren was an elder of
the chapel.

The inspector arrived at noon, a Mr. Quill of Trinity House, with a leather case and a cold. He checked
the lens, the clockwork, the wicks and the oil, and he wrote in his own book while Margaret waited.

"Everything is in order, Miss Ellery," he said at last. "Your father would be proud. I am told he is
recovering?"

"Slowly, sir. The doctor says he may walk again by the summer."

"Good. Then I shall recommend that you continue as keeper until he is able." He closed his case, then
hesitated. "One more thing. The entry for the fourteenth of January. May I see it?"

She turned the pages back and showed him. Mr. Quill read it twice, and his face, which had been pink
from the wind, went quite pale.

"No lights showing," he said quietly. "Then it was true."

1. The keeper lights the lamp at sunset and writes the hour in the ledger.
2. The wicks are trimmed every four hours through the night.
3. At dawn the lamp is put out, the lens is covered, and the weather is recorded.

Question: How many steps does the north tower have?
Answer: One hundred and twelve.
Question: Who was the captain of the Eleanor, and what was she carrying?
Answer: Captain Josiah Wren; she carried slate and copper ore.
"""
