//! `adyton infer`: run a model on an attested inference server. The server is verified before any
//! input file is read; inputs come from .npy or JSON files, outputs are printed as JSON or written
//! as .npy, .npz or JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use adyton_cli::secrets::TokenFileArgs;
use adyton_client::{InferTensor, ModelMetadata, Token};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::attest::{connect_server, AttestedServerArgs};
use crate::files::{print_stdout, read_limited, OutputFile, OutputKind};
use crate::secrets::read_token_file;

#[derive(Debug, Args)]
#[command(mut_arg("token_file", |arg| arg.help(
    "The server's bearer token, for servers that require one"
)))]
pub struct InferArgs {
    #[command(flatten)]
    pub server: AttestedServerArgs,

    /// The model's name on the server.
    #[arg(value_name = "MODEL")]
    pub model: String,

    /// An input: its name and a .npy or .json file (`{"shape", "datatype", "data"}` or a nested
    /// array of the model's data type). Repeat for each input.
    #[arg(long = "input", value_name = "NAME=FILE", required = true)]
    pub inputs: Vec<String>,

    /// Write the outputs to OUT.npy (one output), OUT.npz (any number) or OUT.json, instead of
    /// printing them as JSON.
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub token_file: TokenFileArgs,
}

/// Largest input file read (inputs are held in memory, zeroized afterwards).
const MAX_INPUT_FILE_LEN: u64 = 1 << 30;

/// Where the outputs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Stdout,
    Npy,
    Npz,
    Json,
}

pub fn infer(args: &InferArgs) -> Result<()> {
    // Everything that reads no input is checked first; the inputs are read only once the server
    // is verified, so a refused server never sees, and this command never opens, an input.
    let format = output_format(args.output.as_deref())?;
    let specs = args
        .inputs
        .iter()
        .map(|spec| parse_input_spec(spec))
        .collect::<Result<Vec<_>>>()?;
    let token = args
        .token_file
        .path
        .as_deref()
        .map(|path| read_token_file(path, "token file").map(|t| Token::new(t.as_str())))
        .transpose()?;
    let client = connect_server(&args.server, token)?;
    let verified = client.verified();
    eprintln!(
        "verified {} server, measurement {}, certificate SHA-256 {}",
        verified.claims.tee,
        verified.claims.primary_measurement(),
        hex::encode(verified.certificate_sha256)
    );

    let metadata = client
        .model_metadata(&args.model)
        .with_context(|| format!("cannot read the metadata of model `{}`", args.model))?;
    let output = match (&args.output, format) {
        (Some(path), OutputFormat::Npy | OutputFormat::Npz | OutputFormat::Json) => Some((
            path,
            OutputFile::create(path, args.force, OutputKind::Public)?,
        )),
        _ => None,
    };
    let inputs = specs
        .iter()
        .map(|(name, path)| read_input(name, path, &metadata))
        .collect::<Result<Vec<_>>>()?;
    let outputs = client
        .infer(&args.model, &inputs)
        .with_context(|| format!("inference with model `{}` failed", args.model))?;
    drop(inputs);

    match output {
        None => print_stdout(&format!("{:#}", outputs_json(&metadata.name, &outputs)?)),
        Some((path, mut out)) => {
            write_outputs(out.file(), format, &metadata.name, &outputs)
                .with_context(|| format!("cannot write {}", path.display()))?;
            out.commit()?;
            eprintln!("wrote {} outputs to {}", outputs.len(), path.display());
            Ok(())
        }
    }
}

fn output_format(path: Option<&Path>) -> Result<OutputFormat> {
    // `-o -` is what no `-o` does: JSON on standard output.
    let Some(path) = path.filter(|p| p.as_os_str() != "-") else {
        return Ok(OutputFormat::Stdout);
    };
    match extension(path).as_deref() {
        Some("npy") => Ok(OutputFormat::Npy),
        Some("npz") => Ok(OutputFormat::Npz),
        Some("json") => Ok(OutputFormat::Json),
        _ => bail!("-o {}: name a .npy, .npz or .json file", path.display()),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// `NAME=FILE`.
fn parse_input_spec(spec: &str) -> Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => bail!("--input `{spec}` is not NAME=FILE"),
    }
}

/// Reads one input file as the tensor `name`; the model's metadata gives the data type of JSON
/// arrays that do not name one.
fn read_input(name: &str, path: &Path, metadata: &ModelMetadata) -> Result<InferTensor> {
    let Some(declared) = metadata.inputs.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = metadata.inputs.iter().map(|d| d.name.as_str()).collect();
        bail!(
            "model `{}` has no input `{name}` (its inputs: {})",
            metadata.name,
            names.join(", ")
        );
    };
    let tensor = match extension(path).as_deref() {
        Some("npy") => {
            let bytes = read_limited(path, MAX_INPUT_FILE_LEN, "input file")?;
            npy::read(name, &bytes)
        }
        Some("json") => {
            let bytes = read_limited(path, MAX_INPUT_FILE_LEN, "input file")?;
            json_input(name, &declared.datatype, &bytes)
        }
        _ => bail!("input file {}: name a .npy or .json file", path.display()),
    };
    tensor.with_context(|| format!("input file {} (input `{name}`)", path.display()))
}

/// `{"shape", "datatype", "data"}` (shape and datatype optional), or a bare nested array of the
/// model's data type.
fn json_input(name: &str, declared_datatype: &str, bytes: &[u8]) -> Result<InferTensor> {
    let value: Value = serde_json::from_slice(bytes).context("not JSON")?;
    let tensor = match &value {
        Value::Object(object) => {
            for key in object.keys() {
                if !matches!(key.as_str(), "shape" | "datatype" | "data" | "name") {
                    bail!("unknown field `{key}` (expected shape, datatype, data)");
                }
            }
            let data = object.get("data").context("no `data` field")?;
            let datatype = match object.get("datatype") {
                Some(Value::String(datatype)) => datatype.as_str(),
                Some(_) => bail!("`datatype` is not a string"),
                None => declared_datatype,
            };
            let shape = object
                .get("shape")
                .map(|shape| serde_json::from_value::<Vec<usize>>(shape.clone()))
                .transpose()
                .context("`shape` is not a list of sizes")?;
            InferTensor::from_json(name, datatype, shape, data)
        }
        other => InferTensor::from_json(name, declared_datatype, None, other),
    };
    tensor.map_err(anyhow::Error::msg)
}

fn outputs_json(model: &str, outputs: &[InferTensor]) -> Result<Value> {
    let outputs = outputs
        .iter()
        .map(|t| {
            t.to_json()
                .map_err(|e| anyhow::anyhow!("output `{}`: {e}", t.name))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({"model_name": model, "outputs": outputs}))
}

fn write_outputs(
    file: &mut std::fs::File,
    format: OutputFormat,
    model: &str,
    outputs: &[InferTensor],
) -> Result<()> {
    match format {
        OutputFormat::Npy => match outputs {
            [single] => npy::write(file, single),
            _ => bail!(
                "model `{model}` gave {} outputs; write them as .npz or .json",
                outputs.len()
            ),
        },
        OutputFormat::Npz => {
            let mut zip = zip::ZipWriter::new(file);
            for output in outputs {
                // Stored, as numpy's own `savez` writes them; large outputs need ZIP64.
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored)
                    .large_file(output.data.len() as u64 >= u64::from(u32::MAX) - 4096);
                zip.start_file(format!("{}.npy", output.name), options)?;
                npy::write(&mut zip, output)?;
            }
            zip.finish()?;
            Ok(())
        }
        OutputFormat::Json => {
            let text = format!("{:#}\n", outputs_json(model, outputs)?);
            file.write_all(text.as_bytes())?;
            Ok(())
        }
        OutputFormat::Stdout => bail!("standard output is not a file"),
    }
}

/// numpy's .npy format (versions 1.0 to 3.0), strictly: little-endian fixed-size types, C order.
mod npy {
    use std::io::Write;

    use adyton_client::InferTensor;
    use anyhow::{bail, Context, Result};

    const MAGIC: &[u8] = b"\x93NUMPY";

    /// The numpy `descr` of a protocol data type, and back.
    const TYPES: &[(&str, &str)] = &[
        ("|b1", "BOOL"),
        ("|u1", "UINT8"),
        ("<u2", "UINT16"),
        ("<u4", "UINT32"),
        ("<u8", "UINT64"),
        ("|i1", "INT8"),
        ("<i2", "INT16"),
        ("<i4", "INT32"),
        ("<i8", "INT64"),
        ("<f2", "FP16"),
        ("<f4", "FP32"),
        ("<f8", "FP64"),
    ];

    fn datatype_of(descr: &str) -> Option<&'static str> {
        // One-byte types have no byte order; numpy writes `|`, some tools `<`.
        let descr = match descr {
            "<b1" => "|b1",
            "<u1" => "|u1",
            "<i1" => "|i1",
            other => other,
        };
        TYPES
            .iter()
            .find(|(d, _)| *d == descr)
            .map(|(_, datatype)| *datatype)
    }

    /// Reads a .npy file's bytes as the tensor `name`.
    pub fn read(name: &str, bytes: &[u8]) -> Result<InferTensor> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .context("not a .npy file (no \\x93NUMPY magic)")?;
        let (version, rest) = rest.split_first_chunk::<2>().context("truncated header")?;
        let (header_len, rest) = match version {
            [1, 0] => {
                let (len, rest) = rest.split_first_chunk::<2>().context("truncated header")?;
                (usize::from(u16::from_le_bytes(*len)), rest)
            }
            [2 | 3, 0] => {
                let (len, rest) = rest.split_first_chunk::<4>().context("truncated header")?;
                (usize::try_from(u32::from_le_bytes(*len))?, rest)
            }
            [major, minor] => bail!(".npy version {major}.{minor} is not supported (1.0 to 3.0)"),
        };
        let (header, data) = rest
            .split_at_checked(header_len)
            .context("the header is longer than the file")?;
        let header = std::str::from_utf8(header).context("the header is not text")?;
        let (descr, fortran_order, shape) = parse_header(header)?;
        if fortran_order {
            bail!("Fortran order is not supported; save a C-ordered array (np.ascontiguousarray)");
        }
        let datatype = datatype_of(&descr).with_context(|| {
            format!(
                "dtype `{descr}` is not supported (little-endian bool, integers, float16/32/64)"
            )
        })?;
        let tensor = InferTensor::new(name, datatype, shape, data.to_vec());
        tensor.check().map_err(anyhow::Error::msg)?;
        if datatype == "BOOL" && data.iter().any(|b| *b > 1) {
            bail!("a bool element is neither 0 nor 1");
        }
        Ok(tensor)
    }

    /// The header's dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
    fn parse_header(text: &str) -> Result<(String, bool, Vec<usize>)> {
        let mut parser = Parser {
            rest: text.trim_end_matches(['\n', ' ', '\0']),
        };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        parser.expect('{')?;
        loop {
            if parser.eat('}') {
                break;
            }
            let key = parser.string()?;
            parser.expect(':')?;
            let duplicate = match key.as_str() {
                "descr" => descr.replace(parser.string()?).is_some(),
                "fortran_order" => fortran_order.replace(parser.boolean()?).is_some(),
                "shape" => shape.replace(parser.tuple()?).is_some(),
                other => bail!("unknown header key `{other}`"),
            };
            if duplicate {
                bail!("header key `{key}` appears twice");
            }
            if !parser.eat(',') {
                parser.expect('}')?;
                break;
            }
        }
        if !parser.rest.trim().is_empty() {
            bail!("text after the header's dict");
        }
        Ok((
            descr.context("the header has no descr")?,
            fortran_order.context("the header has no fortran_order")?,
            shape.context("the header has no shape")?,
        ))
    }

    struct Parser<'a> {
        rest: &'a str,
    }

    impl Parser<'_> {
        fn eat(&mut self, c: char) -> bool {
            self.rest = self.rest.trim_start();
            match self.rest.strip_prefix(c) {
                Some(rest) => {
                    self.rest = rest;
                    true
                }
                None => false,
            }
        }

        fn expect(&mut self, c: char) -> Result<()> {
            if self.eat(c) {
                Ok(())
            } else {
                bail!("malformed header: expected `{c}`")
            }
        }

        fn string(&mut self) -> Result<String> {
            self.rest = self.rest.trim_start();
            let quote = self
                .rest
                .chars()
                .next()
                .filter(|c| matches!(c, '\'' | '"'))
                .context("malformed header: expected a string")?;
            let body = &self.rest[1..];
            let end = body
                .find(quote)
                .context("malformed header: unterminated string")?;
            self.rest = &body[end + 1..];
            Ok(body[..end].to_owned())
        }

        fn boolean(&mut self) -> Result<bool> {
            self.rest = self.rest.trim_start();
            for (word, value) in [("True", true), ("False", false)] {
                if let Some(rest) = self.rest.strip_prefix(word) {
                    self.rest = rest;
                    return Ok(value);
                }
            }
            bail!("malformed header: expected True or False")
        }

        fn tuple(&mut self) -> Result<Vec<usize>> {
            self.expect('(')?;
            let mut dims = Vec::new();
            loop {
                if self.eat(')') {
                    return Ok(dims);
                }
                self.rest = self.rest.trim_start();
                let digits = self
                    .rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(self.rest.len());
                let dim = self.rest[..digits]
                    .parse::<usize>()
                    .context("malformed header: a shape holds sizes only")?;
                self.rest = &self.rest[digits..];
                dims.push(dim);
                if !self.eat(',') {
                    self.expect(')')?;
                    return Ok(dims);
                }
            }
        }
    }

    /// Writes `tensor` as a .npy file (version 1.0, or 2.0 for a header over 64 KiB).
    pub fn write(out: &mut impl Write, tensor: &InferTensor) -> Result<()> {
        let Some((descr, _)) = TYPES.iter().find(|(_, d)| *d == tensor.datatype) else {
            bail!(
                "output `{}` is {}, which .npy cannot hold; write .json instead",
                tensor.name,
                tensor.datatype
            );
        };
        tensor.check().map_err(anyhow::Error::msg)?;
        let shape = match tensor.shape.as_slice() {
            [single] => format!("({single},)"),
            dims => format!(
                "({})",
                dims.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // The data starts on a 64-byte boundary, as numpy writes it: magic, version, length,
        // header, padding, newline.
        let prefix = |len_size: usize| MAGIC.len() + 2 + len_size;
        // Version 1.0 while the padded header fits its 16-bit length.
        let len_size = if header.len() + 64 < usize::from(u16::MAX) {
            2
        } else {
            4
        };
        let padding = (64 - (prefix(len_size) + header.len() + 1) % 64) % 64;
        header.push_str(&" ".repeat(padding));
        header.push('\n');
        out.write_all(MAGIC)?;
        if len_size == 2 {
            out.write_all(&[1, 0])?;
            out.write_all(&u16::try_from(header.len())?.to_le_bytes())?;
        } else {
            out.write_all(&[2, 0])?;
            out.write_all(&u32::try_from(header.len())?.to_le_bytes())?;
        }
        out.write_all(header.as_bytes())?;
        out.write_all(&tensor.data)?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn written_files_read_back() {
            for (datatype, shape, len) in [
                ("FP32", vec![2, 3], 24),
                ("INT64", vec![3], 24),
                ("BOOL", vec![], 1),
                ("FP16", vec![0, 4], 0),
            ] {
                let tensor = InferTensor::new("t", datatype, shape.clone(), vec![0; len]);
                let mut bytes = Vec::new();
                write(&mut bytes, &tensor).unwrap();
                let header_end = bytes.len() - len;
                assert_eq!(header_end % 64, 0, "{datatype}");
                assert_eq!(bytes[header_end - 1], b'\n');
                let back = read("t", &bytes).unwrap();
                assert_eq!(back, tensor);
            }
        }

        #[test]
        fn numpy_headers_parse() {
            let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }          \n";
            assert_eq!(
                parse_header(header).unwrap(),
                ("<f4".to_owned(), false, vec![1, 3])
            );
            assert_eq!(
                parse_header("{'descr': '|b1', 'fortran_order': True, 'shape': (5,)}").unwrap(),
                ("|b1".to_owned(), true, vec![5])
            );
            for bad in [
                "{'descr': '<f4', 'fortran_order': False}",
                "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}",
                "{'descr': '<f4', 'fortran_order': False, 'shape': ()} x",
            ] {
                assert!(parse_header(bad).is_err(), "{bad}");
            }
        }

        #[test]
        fn unsupported_arrays_are_refused() {
            let tensor = InferTensor::new("t", "FP32", vec![2], vec![0; 8]);
            let mut bytes = Vec::new();
            write(&mut bytes, &tensor).unwrap();
            // The magic is not UTF-8: edit the header's bytes in place.
            let replace = |from: &[u8], to: &[u8]| {
                let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
                let mut edited = bytes.clone();
                edited[at..at + to.len()].copy_from_slice(to);
                edited
            };
            let big_endian = replace(b"<f4", b">f4");
            assert!(read("t", &big_endian)
                .unwrap_err()
                .to_string()
                .contains(">f4"));
            let fortran = replace(b"False", b"True ");
            assert!(read("t", &fortran)
                .unwrap_err()
                .to_string()
                .contains("Fortran"));
            assert!(read("t", &bytes[..bytes.len() - 1]).is_err());
            assert!(read("t", b"not npy").is_err());
        }
    }
}
