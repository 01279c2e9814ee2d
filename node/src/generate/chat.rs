//! Chat prompts from messages. A model that ships a Jinja chat template (kept in its manifest as
//! `chat_template.jinja`, hashed like every model file) is prompted exactly as it was trained:
//! the template is rendered with minijinja under the settings of Hugging Face transformers'
//! `apply_chat_template` (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, Python
//! string and dict methods). A model without one gets the plain transcript documented in
//! `protocol-spec/model-format.md`.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::Prompt;
use crate::model::ModelManifest;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A chat template that cannot be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("cannot read the chat template {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("the model's chat template does not compile: {0:#}")]
    Compile(Error),
    /// The template refused the conversation (e.g. `raise_exception("roles must alternate")`)
    /// or failed on it.
    #[error("the model's chat template rejects these messages: {0}")]
    Render(String),
}

const TEMPLATE_NAME: &str = "chat_template";

/// How a model turns messages into a prompt.
pub enum ChatFormat {
    /// The model's own template (boxed: a minijinja environment is large).
    Template { env: Box<Environment<'static>>, bos_token: String, eos_token: String },
    /// `role: content` lines, then `assistant:`.
    Plain,
}

impl ChatFormat {
    /// The model's chat template, compiled, or the plain format when it has none.
    pub fn load(
        manifest: &ModelManifest,
        tokenizer: &Tokenizer,
    ) -> Result<Self, ChatTemplateError> {
        let Some(file) = &manifest.tokenizer.chat_template else {
            return Ok(Self::Plain);
        };
        let path = manifest.path(file);
        let source = std::fs::read_to_string(&path)
            .map_err(|source| ChatTemplateError::Io { path: path.clone(), source })?;
        let token =
            |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).unwrap_or_default();
        Self::compile(
            source,
            token(manifest.tokenizer.bos_token_id),
            token(manifest.tokenizer.eos_token_ids.first().copied()),
        )
    }

    /// Compiles `source` with the special-token strings templates refer to.
    pub fn compile(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE_NAME, source).map_err(ChatTemplateError::Compile)?;
        Ok(Self::Template { env: Box::new(env), bos_token, eos_token })
    }

    /// The prompt for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        match self {
            Self::Template { env, bos_token, eos_token } => {
                let template = env.get_template(TEMPLATE_NAME).expect("added at compile");
                template
                    .render(context! {
                        messages => messages,
                        add_generation_prompt => true,
                        bos_token => bos_token,
                        eos_token => eos_token,
                    })
                    .map_err(|e| ChatTemplateError::Render(render_error(&e)))
            }
            Self::Plain => {
                let mut prompt: String =
                    messages.iter().map(|m| format!("{}: {}\n", m.role, m.content)).collect();
                prompt.push_str("assistant:");
                Ok(prompt)
            }
        }
    }

    /// How a prompt rendered by [`Self::render`] is tokenized: a template writes every special
    /// token itself (the tokenizer adds none, as when transformers tokenizes a rendered chat);
    /// the plain transcript is ordinary text.
    pub fn prompt<'a>(&self, rendered: &'a str) -> Prompt<'a> {
        match self {
            Self::Template { .. } => Prompt::Chat(rendered),
            Self::Plain => Prompt::Text(rendered),
        }
    }
}

/// The template's own message for `raise_exception`, minijinja's description otherwise.
fn render_error(error: &Error) -> String {
    match (error.kind(), error.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_owned(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(role, content)| ChatMessage { role: (*role).into(), content: (*content).into() })
            .collect()
    }

    /// SmolLM2-135M-Instruct's template, verbatim from its GGUF metadata.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt_and_generation_prompt() {
        let format = ChatFormat::compile(SMOLLM2.into(), String::new(), "<|im_end|>".into())
            .expect("compiles");
        let prompt = format.render(&messages(&[("user", "What is the capital of France?")]));
        assert_eq!(
            prompt.unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = format.render(&messages(&[("system", "Be brief."), ("user", "Hi")]));
        assert_eq!(
            with_system.unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(matches!(format.prompt("x"), Prompt::Chat("x")));
    }

    #[test]
    fn python_methods_bos_token_and_block_trimming_work_as_in_transformers() {
        // Llama-3-style: bos_token, .strip(), trim_blocks after `{% ... %}` lines.
        let source = "{{ bos_token }}{% for m in messages %}\n{{ m['role'] | upper }}: {{ m['content'].strip() }}\n{% endfor %}\n";
        let format = ChatFormat::compile(source.into(), "<s>".into(), "</s>".into()).unwrap();
        assert_eq!(format.render(&messages(&[("user", "  hi  ")])).unwrap(), "<s>USER: hi\n");
    }

    #[test]
    fn raise_exception_becomes_a_render_error_with_the_templates_message() {
        let source = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let format = ChatFormat::compile(source.into(), String::new(), String::new()).unwrap();
        let err = format.render(&messages(&[("assistant", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the model's chat template rejects these messages: Conversation roles must alternate"
        );
        assert_eq!(format.render(&messages(&[("user", "x")])).unwrap(), "ok");
    }

    #[test]
    fn a_broken_template_is_refused_at_load() {
        let err =
            ChatFormat::compile("{% for m in messages %}".into(), String::new(), String::new());
        assert!(matches!(err, Err(ChatTemplateError::Compile(_))));
    }

    #[test]
    fn plain_format_is_a_transcript() {
        let prompt =
            ChatFormat::Plain.render(&messages(&[("system", "s"), ("user", "u")])).unwrap();
        assert_eq!(prompt, "system: s\nuser: u\nassistant:");
        assert!(matches!(ChatFormat::Plain.prompt("x"), Prompt::Text("x")));
    }
}
