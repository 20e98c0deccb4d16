/**
 * The built-in calibration text of `--quant-search activation-clip` (used unless `--quant-calibration FILE` names
 * another): a few hundred tokens of mixed prose, dialogue, a recipe, numbers and code, so that the activation
 * statistics see the kinds of text a chat model serves rather than one register. Written for Chorus; changing it
 * changes the cache key of every conversion that uses it (the key hashes the calibration tokens).
 */
export const defaultCalibrationText = `The river had been low all summer, and by September the old stone bridge stood on dry gravel. Children walked
under its arches collecting shells, while their grandparents remembered floods that had reached the bakery windows.
Nobody in the village could agree on whether the drought was a warning or simply a long, strange season.

"Can you check the train times for tomorrow?" Maria asked. "The 7:45 to Lyon was cancelled twice last week."
"I'll look now," said Tom, opening his laptop. "There's a 8:10 with a change in Dijon, or a direct one at 9:32."

To make a simple tomato soup, soften one chopped onion and two cloves of garlic in olive oil for about ten minutes.
Add 800 g of tomatoes, a pinch of sugar, salt and 500 ml of vegetable stock, simmer for twenty minutes, then blend
until smooth. Serve with bread, a spoon of cream and a few basil leaves.

In 1969, the Apollo 11 mission landed on the Moon; the lunar module touched down in the Sea of Tranquility with
less than a minute of fuel to spare. Photosynthesis converts carbon dioxide and water into glucose and oxygen using
light energy, and the mitochondria of a cell turn that glucose back into usable energy.

def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]

SELECT customer_id, COUNT(*) AS orders, SUM(total) AS revenue
FROM orders WHERE created_at >= '2024-01-01'
GROUP BY customer_id ORDER BY revenue DESC LIMIT 10;

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "application/json" })
  res.end(JSON.stringify({ ok: true, path: req.url }))
})

Dear hiring committee, I am writing to apply for the position of research assistant. Over the past two years I have
analysed survey data, written reports for non-specialist readers and organised workshops for forty participants.
I would welcome the chance to discuss how my experience could support your team's work on urban air quality.

Q: What is the capital of Australia? A: Canberra. Q: How many sides does a hexagon have? A: Six.
Q: If a shirt costs 24 dollars after a 20% discount, what was the original price? A: 24 / 0.8 = 30 dollars.
`
