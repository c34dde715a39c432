// Regenerates the "ids" of gpt2_edge_cases.jsonl with the npm package
// gpt-3-encoder@1.1.4 (the same encoder the ../shared/assets GPT-2 references
// were made with; MIT, AIDungeon):
//   npm install gpt-3-encoder@1.1.4
//   node tests/data/testdata/gen_gpt2_edge_cases.js < tests/data/testdata/gpt2_edge_cases.jsonl > new.jsonl
const {encode} = require('gpt-3-encoder');
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter((l) => l.trim());
for (const l of lines) {
  const text = JSON.parse(l).text;
  console.log(JSON.stringify({text: text, ids: encode(text)}));
}
