// Compiles Token.sol with the solc npm package (offline: the compiler is in the package) for the
// `paris` EVM, which every ganache 7 hardfork runs, and writes Token.bin and Token.abi.
//   NODE_PATH=<dir with node_modules> node compile.js        (.ci/run checks the output is unchanged)
const fs = require("fs");
const path = require("path");
const solc = require("solc");
const source = fs.readFileSync(path.join(__dirname, "Token.sol"), "utf8");
const input = {
  language: "Solidity",
  sources: { "Token.sol": { content: source } },
  settings: {
    evmVersion: "paris",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const token = output.contracts["Token.sol"].Token;
fs.writeFileSync(path.join(__dirname, "Token.bin"), token.evm.bytecode.object + "\n");
fs.writeFileSync(path.join(__dirname, "Token.abi"), JSON.stringify(token.abi) + "\n");
console.log(`solc ${solc.version()}: Token.bin ${token.evm.bytecode.object.length / 2} bytes`);
