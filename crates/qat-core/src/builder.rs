//! By-value builder setters, written once: [`by_value_setters!`](crate::by_value_setters).
//!
//! The layer configs of training, the export IR and the model builder all configure a value with
//! chained calls `Config::new(..).stride(2).activation(a)`: each setter takes `self` by value, sets
//! one field and returns `self`. The macro writes those methods from a list, so that every setter
//! of the workspace has the same form and only its documentation, name, field and value differ.

/// Writes documented by-value setters `fn name(mut self, arg: T) -> Self { self.field = value; self }`
/// inside an `impl` block.
///
/// Each entry is the setter's attributes (its doc comment), visibility, name and argument, then
/// `=>` the field it sets, and optionally `= expression` for the value stored (the argument itself
/// when left out):
///
/// ```text
/// /// doc
/// pub fn name(arg: Type) => field;               // self.field = arg
/// /// doc
/// pub fn name(arg: Type) => field = expression;  // self.field = expression (of arg)
/// ```
///
/// ```
/// #[derive(Debug, PartialEq)]
/// struct Window {
///     stride: [usize; 2],
///     groups: usize,
///     bias: Option<Vec<f32>>,
/// }
///
/// impl Window {
///     qat_core::by_value_setters! {
///         /// Sets the same stride on both axes.
///         pub fn stride(s: usize) => stride = [s, s];
///         /// Sets the number of groups.
///         pub fn groups(g: usize) => groups;
///         /// Sets the bias.
///         pub fn with_bias(b: Vec<f32>) => bias = Some(b);
///     }
/// }
///
/// let w = Window { stride: [1, 1], groups: 1, bias: None }
///     .stride(2)
///     .groups(4)
///     .with_bias(vec![0.5]);
/// assert_eq!(w, Window { stride: [2, 2], groups: 4, bias: Some(vec![0.5]) });
/// ```
#[macro_export]
macro_rules! by_value_setters {
    (@value $arg:ident) => {
        $arg
    };
    (@value $arg:ident, $value:expr) => {
        $value
    };
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident: $arg_ty:ty) => $field:ident $(= $value:expr)?;
    )*) => {$(
        $(#[$attr])*
        $vis fn $name(mut self, $arg: $arg_ty) -> Self {
            self.$field = $crate::by_value_setters!(@value $arg $(, $value)?);
            self
        }
    )*};
}
