// Evaluate abacus experiments as feature flags with OpenFeature (Node.js).
//
//   npm install @openfeature/server-sdk@1.23.0 @openfeature/ofrep-provider@0.1.3
//   ABACUS_URL=http://127.0.0.1:8080 ABACUS_KEY=... node examples/openfeature/evaluate.mjs checkout user-42
//
// The flag is an experiment's key and the targeting key its unit id; the
// value is the variant's payload (its key when it has none).
import { OpenFeature } from "@openfeature/server-sdk";
import { OFREPProvider } from "@openfeature/ofrep-provider";

const url = process.env.ABACUS_URL ?? "http://127.0.0.1:8080";
const key = process.env.ABACUS_KEY ?? "";
const [flag, unit] = process.argv.slice(2);

await OpenFeature.setProviderAndWait(
  new OFREPProvider({ baseUrl: url, headers: key ? [["Authorization", `Bearer ${key}`]] : [] }),
);
const client = OpenFeature.getClient();
const details = await client.getStringDetails(flag, "control", { targetingKey: unit });
console.log(
  `${flag} for ${unit}: value=${JSON.stringify(details.value)} variant=${details.variant} ` +
    `reason=${details.reason} abacus=${details.flagMetadata?.reason} error=${details.errorCode ?? "none"}`,
);
