// The numeric settings of src/config.ts as command-line flags: one table gives `serve` and
// `worker` their flags, defaults and help, and applies what was given.
import {
  applySetting,
  flagDefault,
  NUMERIC_SETTINGS,
  type NumericSetting,
  type ServerConfigInput,
} from "../config.js";
import { type FlagSpecs, type FlagValues, int } from "./args.js";

type Command = NumericSetting["commands"][number];

const settingsOf = (command: Command) => NUMERIC_SETTINGS.filter((s) => s.commands.includes(command));

/** The flags of a command's numeric settings, with their defaults in the flags' own units. */
export function settingFlags(command: Command): FlagSpecs {
  return Object.fromEntries(
    settingsOf(command).map((s) => [
      s.flag,
      { type: "string", help: s.help, default: String(flagDefault(s)) },
    ]),
  );
}

/** Store the numeric settings given on the command line into a config input. */
export function applySettingFlags(values: FlagValues, input: ServerConfigInput, command: Command): void {
  for (const s of settingsOf(command)) {
    const v = int(values, s.flag, s.min);
    if (v !== undefined) applySetting(input, s, v);
  }
}
